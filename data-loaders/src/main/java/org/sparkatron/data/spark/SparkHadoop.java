package org.sparkatron.data.spark;

import java.util.HashMap;
import java.util.Map;
import org.apache.spark.sql.SparkSession;

/** The session's Hadoop configuration as plain entries, to ship to executors with a task. */
final class SparkHadoop {
    private SparkHadoop() {
    }

    static Map<String, String> confMap(SparkSession spark) {
        Map<String, String> m = new HashMap<>();
        for (Map.Entry<String, String> e : spark.sparkContext().hadoopConfiguration()) {
            m.put(e.getKey(), e.getValue());
        }
        return m;
    }
}
