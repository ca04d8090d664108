package org.sparkatron.data.spark;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.scheduler.AccumulableInfo;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerExecutorMetricsUpdate;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.util.LongAccumulator;
import scala.Tuple4;
import scala.collection.Iterator;

/**
 * Live progress of running tasks: accumulators reach the driver only when a task ends, but executor
 * heartbeats ({@code spark.executor.heartbeatInterval}, 10 s by default) carry the running tasks' partial
 * values. This listener keeps the latest partial value per running task for one accumulator, so that
 * {@link #value} = finished tasks' sum + running tasks' partials. Called on Spark's listener thread;
 * {@link #value} may be read from any thread.
 */
final class ProgressListener extends SparkListener {
    private final LongAccumulator acc;
    private final Map<Long, Long> running = new ConcurrentHashMap<>();

    ProgressListener(LongAccumulator acc) {
        this.acc = acc;
    }

    @Override
    public void onExecutorMetricsUpdate(SparkListenerExecutorMetricsUpdate update) {
        Iterator<Tuple4<Object, Object, Object, scala.collection.immutable.Seq<AccumulableInfo>>> it =
                update.accumUpdates().iterator();
        while (it.hasNext()) {
            Tuple4<Object, Object, Object, scala.collection.immutable.Seq<AccumulableInfo>> t = it.next();
            long taskId = (Long) t._1();
            Iterator<AccumulableInfo> infos = t._4().iterator();
            while (infos.hasNext()) {
                AccumulableInfo info = infos.next();
                if (info.id() == acc.id() && info.update().isDefined()) {
                    Object v = info.update().get();
                    if (v instanceof Number n) {
                        running.put(taskId, n.longValue());
                    }
                }
            }
        }
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd end) {
        running.remove(end.taskInfo().taskId());
    }

    long value() {
        long v = acc.value();
        for (long p : running.values()) {
            v += p;
        }
        return v;
    }
}
