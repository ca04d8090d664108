package org.sparkatron.spark;

import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.ExceptionFailure;
import org.apache.spark.SparkContext;
import org.apache.spark.TaskFailedReason;
import org.apache.spark.TaskKilled;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerJobStart;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.scheduler.SparkListenerTaskStart;
import org.apache.spark.storage.RDDInfo;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Ends a training job at its first {@link DeterministicFailure} instead of letting Spark retry the
 * barrier stage: a Spark listener on the driver for the duration of one job. The job's Spark jobs carry
 * a job tag of their own ({@code SparkContext.addJobTag}, on the submitting thread, beside any tags and
 * group the user set); when a task of one of their stages fails with a {@link DeterministicFailure}, the
 * listener cancels the tagged jobs with the failure's message ({@code cancelJobsWithTag}), so a retry
 * that Spark may already have submitted is killed at once, and {@link #outcome} turns Spark's "job
 * cancelled" into the rank's own error.
 *
 * <p>Ranks tell it first ({@link FailureNotice}, {@link #noticed}): Spark resubmits a failed barrier stage
 * 200 ms after the failure (its {@code RESUBMIT_TIMEOUT}), while a listener learns of the failure through
 * the asynchronous listener bus, which under load lags by more than that, so a listener alone lets Spark
 * submit the retry before the cancellation. A rank with a deterministic failure therefore asks the driver
 * to end the job and waits for the answer before it fails its task: the cancellation is then in the
 * scheduler's queue before any failure of the attempt, and Spark never resubmits the stage. The listener
 * path stays for a rank that could not reach the driver.
 *
 * <p>It also ends every rank of a failed attempt. Spark kills the other tasks of a barrier stage when one
 * fails, except when the failure is a fetch failure (the data shuffle's blocks were on an executor that
 * died): then the attempt is abandoned but its other tasks keep running, blocked in
 * {@code BarrierTaskContext.allGather} for good, and the retried attempt can never get their slots (seen
 * when the task reaper took down a frozen rank's executor). So when a task of one of the job's barrier
 * stages fails for any reason, this listener kills the attempt's other running tasks
 * ({@code killTaskAttempt}, with interrupt; their watchdog aborts the communicator).
 *
 * <p>Threads: created and closed by the driver thread that runs the job; the listener methods run on
 * Spark's listener-bus thread (cancelling only posts an event to the scheduler).
 */
final class FailFast extends SparkListener implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(FailFast.class);
    private static final String TAGS_PROPERTY = "spark.job.tags";

    private final SparkContext sc;
    private final String tag = "sparkatron-" + UUID.randomUUID();
    private final Set<Integer> stages = ConcurrentHashMap.newKeySet();
    private final Set<Integer> barrierStages = ConcurrentHashMap.newKeySet();
    /** Task ids still running per barrier stage attempt ("stage.attempt"). */
    private final Map<String, Set<Long>> running = new ConcurrentHashMap<>();
    private volatile DeterministicFailure failure;

    /** Tags the calling thread's jobs and starts listening; close it when the job ends. */
    FailFast(SparkContext sc) {
        this.sc = sc;
        sc.addJobTag(tag);
        sc.addSparkListener(this);
    }

    @Override
    public void onJobStart(SparkListenerJobStart start) {
        String tags = start.properties() == null ? null : start.properties().getProperty(TAGS_PROPERTY);
        if (tags != null && Set.of(tags.split(",")).contains(tag)) {
            start.stageIds().foreach(id -> stages.add((Integer) id));
        }
    }

    @Override
    public void onStageSubmitted(SparkListenerStageSubmitted submitted) {
        int id = submitted.stageInfo().stageId();
        if (stages.contains(id) && submitted.stageInfo().rddInfos().exists(r -> ((RDDInfo) r).isBarrier())) {
            barrierStages.add(id);
        }
    }

    @Override
    public void onTaskStart(SparkListenerTaskStart start) {
        if (barrierStages.contains(start.stageId())) {
            running.computeIfAbsent(start.stageId() + "." + start.stageAttemptId(), k -> ConcurrentHashMap.newKeySet())
                    .add(start.taskInfo().taskId());
        }
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd end) {
        endTheAttemptOf(end);
        failFast(end);
    }

    /** When a barrier task failed (not killed), kills the other running tasks of its stage attempt. */
    private void endTheAttemptOf(SparkListenerTaskEnd end) {
        Set<Long> attempt = running.get(end.stageId() + "." + end.stageAttemptId());
        if (attempt == null) {
            return;
        }
        attempt.remove(end.taskInfo().taskId());
        if (!(end.reason() instanceof TaskFailedReason failed) || end.reason() instanceof TaskKilled || attempt.isEmpty()) {
            return;
        }
        String why = failed.toErrorString().lines().findFirst().orElse("").strip();
        String reason = "sparkatron: task " + end.taskInfo().taskId() + " of this barrier stage attempt failed (" + why + ")";
        for (long task : attempt) {
            if (sc.killTaskAttempt(task, true, reason)) { // Spark does it too, except after a fetch failure
                if (failed instanceof org.apache.spark.FetchFailed) {
                    LOG.warn("sparkatron: ending task {} of stage {} attempt {}: {}", task, end.stageId(), end.stageAttemptId(), reason);
                } else {
                    LOG.info("sparkatron: ending task {} of stage {} attempt {}: {}", task, end.stageId(), end.stageAttemptId(), reason);
                }
            }
        }
    }

    private void failFast(SparkListenerTaskEnd end) {
        if (failure != null || !stages.contains(end.stageId()) || !(end.reason() instanceof ExceptionFailure ef)
                || !ef.className().equals(DeterministicFailure.class.getName())) {
            return;
        }
        boolean badInput = ef.exception().isDefined() && ef.exception().get() instanceof DeterministicFailure d && d.badInput();
        end(badInput, ef.description());
    }

    /**
     * A rank's notice of its deterministic failure, before it fails its task: ends the job now. Returns once
     * the cancellation is queued in Spark's scheduler. Called on the plugin's RPC thread or the progress
     * server's thread.
     */
    void noticed(boolean badInput, String message) {
        end(badInput, message);
    }

    private synchronized void end(boolean badInput, String message) {
        if (failure != null) {
            return;
        }
        failure = new DeterministicFailure(badInput, message);
        LOG.error("sparkatron: not retrying (a retry would fail the same way): {}", message);
        sc.cancelJobsWithTag(tag, "sparkatron: not retryable: " + message);
    }

    /**
     * What the job's failure {@code sparkError} means: the rank's {@link DeterministicFailure} when this
     * listener saw one (bad input as an IllegalArgumentException), else {@code sparkError} itself.
     */
    RuntimeException outcome(Exception sparkError) {
        DeterministicFailure f = failure;
        if (f == null) {
            return sparkError instanceof RuntimeException r ? r : sneaky(sparkError);
        }
        if (f.badInput()) {
            return new IllegalArgumentException(f.getMessage(), sparkError);
        }
        DeterministicFailure d = new DeterministicFailure(false, f.getMessage());
        d.initCause(sparkError);
        return d;
    }

    /** Rethrows Spark's own (checked) exception unchanged, as the Scala code that threw it did. */
    @SuppressWarnings("unchecked")
    private static <E extends Exception> RuntimeException sneaky(Exception e) throws E {
        throw (E) e;
    }

    @Override
    public void close() {
        sc.removeSparkListener(this);
        sc.removeJobTag(tag);
    }
}
