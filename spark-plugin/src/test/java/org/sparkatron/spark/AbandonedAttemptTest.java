package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.FutureTask;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.HashPartitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkContext;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.rdd.RDD;
import org.apache.spark.shuffle.FetchFailedException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.runtime.AbstractFunction1;

/**
 * Issue 22, finding 2, as seen on the standalone cluster after the task reaper took down a frozen rank's
 * executor: the retried barrier stage failed with a fetch failure (the data shuffle's blocks had been on
 * that executor), Spark abandoned the attempt without killing its other task, which then waited in
 * {@code allGather} for good and held its slot, so the next attempt never started. Here one of four
 * barrier tasks (more than half of local[4]'s slots) throws a fetch failure on a real shuffle while the
 * other three wait in the barrier; {@link FailFast} must end them so the retried attempt runs. Without it
 * the job hangs (the test gives up after 90 s and cancels it).
 */
class AbandonedAttemptTest {
    private static final int RANKS = 4;

    /** A barrier task: rank 0 of the first attempt fails with a fetch failure, the others meet in the barrier. */
    private static final class Rank extends AbstractFunction1<Iterator<Tuple2<Integer, Integer>>, Iterator<Integer>>
            implements Serializable {
        private static final long serialVersionUID = 1L;
        private final int shuffleId;

        Rank(int shuffleId) {
            this.shuffleId = shuffleId;
        }

        @Override
        public Iterator<Integer> apply(Iterator<Tuple2<Integer, Integer>> rows) {
            BarrierTaskContext ctx = BarrierTaskContext.get();
            if (ctx.partitionId() == 0 && ctx.stageAttemptNumber() == 0) {
                try {
                    Thread.sleep(2000); // the other ranks are in the barrier by now
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                throw sneaky(new FetchFailedException(null, shuffleId, -1L, -1, 0, "injected: the shuffle's blocks are gone", null));
            }
            ctx.allGather("ready");
            return scala.jdk.javaapi.CollectionConverters.asScala(List.of(ctx.stageAttemptNumber()).iterator());
        }

        /** Throws a checked exception from Scala's unchecked world, as Spark's shuffle reader does. */
        @SuppressWarnings("unchecked")
        private static <E extends Exception> RuntimeException sneaky(Exception e) throws E {
            throw (E) e;
        }
    }

    @Test
    @Timeout(150)
    void aFetchFailureInOneRankEndsTheOtherRanksOfItsAttempt() throws Exception {
        SparkContext sc = SharedSpark.get().sparkContext();
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(sc);
        List<Integer> rows = new ArrayList<>();
        for (int i = 0; i < 4 * RANKS; i++) {
            rows.add(i);
        }
        JavaPairRDD<Integer, Integer> data = jsc.parallelize(rows, RANKS).mapToPair(i -> new Tuple2<>(i % RANKS, i))
                .partitionBy(new HashPartitioner(RANKS));
        int shuffleId = ((ShuffleDependency<?, ?, ?>) data.rdd().dependencies().head()).shuffleId();
        RDD<Integer> ranks = data.rdd().barrier().mapPartitions(new Rank(shuffleId), false, TokenData.tag(Integer.class));
        // a closing shuffle makes the barrier stage a shuffle-map stage, which Spark retries (as training does)
        JavaRDD<Integer> closing = JavaRDD.fromRDD(ranks, TokenData.tag(Integer.class))
                .mapToPair(a -> new Tuple2<>(0, a)).partitionBy(new HashPartitioner(1)).values();
        List<Integer> attempts;
        try (FailFast failFast = new FailFast(sc)) {
            // a thread started now inherits the job tag FailFast set on this one
            FutureTask<List<Integer>> job = new FutureTask<>(closing::collect);
            Thread runner = new Thread(job, "abandoned-attempt-job");
            runner.setDaemon(true);
            runner.start();
            try {
                attempts = job.get(90, TimeUnit.SECONDS);
            } catch (TimeoutException e) {
                sc.cancelAllJobs();
                fail("the retried attempt never started: the abandoned attempt's ranks still hold their slots");
                return;
            }
        }
        assertEquals(List.of(1, 1, 1, 1), attempts, "every rank of the result ran in the retried attempt");
    }
}
