package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.spark.SparkConf;
import org.apache.spark.resource.TaskResourceRequest;
import org.junit.jupiter.api.Test;

/**
 * When the training stage asks for its own GPUs (the cluster run is in SparkSubmitAssemblyIT): the decision
 * for each combination of executor GPUs, task GPUs, master and the switch.
 */
class GpuSchedulingTest {
    static SparkConf conf(String executorGpus, String taskGpus) {
        SparkConf c = new SparkConf(false);
        if (executorGpus != null) {
            c.set("spark.executor.resource.gpu.amount", executorGpus);
        }
        if (taskGpus != null) {
            c.set("spark.task.resource.gpu.amount", taskGpus);
        }
        return c;
    }

    @Test
    void executorsWithGpusAndTasksWithoutGetAProfileOfOneGpuPerTask() {
        for (String master : new String[] {"spark://h:7077", "yarn", "k8s://https://api:443", "local-cluster[2,1,1024]"}) {
            GpuScheduling.Decision d = GpuScheduling.decide(conf("4", null).set("spark.task.cpus", "2"), master);
            assertNotNull(d.profile(), master);
            TaskResourceRequest gpu = d.profile().taskResources().get("gpu").get();
            assertEquals(1.0, gpu.amount());
            assertEquals(2.0, d.profile().taskResources().get("cpus").get().amount(), "spark.task.cpus kept");
            assertTrue(d.profile().executorResources().isEmpty(), "a task-only profile: the executors stay as they are");
            assertTrue(d.reason().startsWith("stage-level scheduling: 1 GPU per training task (executors have 4;"), d.reason());
        }
        // a fraction for GPU ETL (spark-rapids-ml's advice): the training stage still takes whole GPUs
        assertNotNull(GpuScheduling.decide(conf("1", "0.25"), "spark://h:7077").profile());
    }

    @Test
    void otherwiseTheDefaultProfile() {
        assertNull(GpuScheduling.decide(conf(null, null), "spark://h:7077").profile(), "no GPUs: one task per core");
        assertNull(GpuScheduling.decide(conf("2", "1"), "spark://h:7077").profile(), "already one GPU per task");
        assertNull(GpuScheduling.decide(conf("2", null), "local[4]").profile(), "local mode has no stage-level scheduling");
        assertNull(GpuScheduling.decide(conf("2", null).set(GpuScheduling.CONF, "false"), "yarn").profile(), "switched off");
        assertTrue(GpuScheduling.decide(conf("2", null), "local[4]").reason().contains("set spark.task.resource.gpu.amount=1"));
    }
}
