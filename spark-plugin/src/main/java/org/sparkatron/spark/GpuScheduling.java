package org.sparkatron.spark;

import org.apache.spark.SparkConf;
import org.apache.spark.resource.ResourceProfile;
import org.apache.spark.resource.ResourceProfileBuilder;
import org.apache.spark.resource.TaskResourceRequests;

/**
 * Stage-level GPU scheduling of the training stage, as XGBoost4J-Spark does it on Spark 3.4+: when the
 * executors have GPUs ({@code spark.executor.resource.gpu.amount} &gt;= 1) but the application's tasks do not
 * ask for a whole one ({@code spark.task.resource.gpu.amount} unset, or a fraction for GPU ETL), the barrier
 * stage alone gets a task resource profile of one GPU per task. The rest of the application (reading,
 * shuffles, scoring) keeps its own settings, and each rank still finds its own GPU address in
 * {@code TaskContext.resources()}.
 *
 * <p>Spark supports a task-only profile on standalone, YARN and Kubernetes with dynamic allocation off
 * (which barrier training requires anyway); in {@code local[N]} and when
 * {@value #CONF}{@code =false} the stage runs with the default profile. Stateless.
 */
final class GpuScheduling {
    /** Turns stage-level scheduling of the training stage off (default true). */
    static final String CONF = "spark.sparkatron.stageLevelScheduling";

    private GpuScheduling() {
    }

    /** What the training stage asks for: a profile (null: the default one) and a line saying why. */
    record Decision(ResourceProfile profile, String reason) {
    }

    /** Decides from the application's settings and master URL. */
    static Decision decide(SparkConf conf, String master) {
        double executorGpus = conf.getDouble("spark.executor.resource.gpu.amount", 0);
        String taskGpus = conf.get("spark.task.resource.gpu.amount", null);
        if (executorGpus < 1) {
            return new Decision(null, "no GPUs on the executors (spark.executor.resource.gpu.amount unset): one task per core");
        }
        if (taskGpus != null && Double.parseDouble(taskGpus) == 1.0) {
            return new Decision(null, "one GPU per task from spark.task.resource.gpu.amount=1");
        }
        if (!conf.getBoolean(CONF, true)) {
            return new Decision(null, CONF + "=false: the default profile (spark.task.resource.gpu.amount="
                    + (taskGpus == null ? "unset" : taskGpus) + ")");
        }
        if (!(master.startsWith("spark://") || master.equals("yarn") || master.startsWith("k8s://")
                || master.startsWith("local-cluster"))) {
            return new Decision(null, "master " + master + " has no stage-level scheduling: set spark.task.resource.gpu.amount=1");
        }
        TaskResourceRequests tasks = new TaskResourceRequests().cpus(conf.getInt("spark.task.cpus", 1)).resource("gpu", 1.0);
        ResourceProfile rp = new ResourceProfileBuilder().require(tasks).build();
        return new Decision(rp, "stage-level scheduling: 1 GPU per training task (executors have "
                + fmt(executorGpus) + "; other stages keep spark.task.resource.gpu.amount=" + (taskGpus == null ? "unset" : taskGpus) + ")");
    }

    private static String fmt(double d) {
        return d == Math.rint(d) ? String.valueOf((long) d) : String.valueOf(d);
    }
}
