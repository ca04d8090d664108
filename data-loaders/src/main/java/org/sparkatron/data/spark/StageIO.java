package org.sparkatron.data.spark;

import java.util.Map;
import org.apache.spark.ml.util.DefaultParamsReadable;
import org.apache.spark.ml.util.MLWriter;
import org.apache.spark.sql.SparkSession;

/**
 * Spark ML persistence shared by Sparkatron's stages: the Params go through Spark's own
 * {@code DefaultParamsWriter}/{@code DefaultParamsReader} (reached through the public
 * {@code DefaultParamsWritable}/{@code DefaultParamsReadable} traits), so {@code path/metadata} is exactly what
 * Spark's built-in stages write and {@code Pipeline}/{@code PipelineModel} (Java, Scala, PySpark) read it; a
 * stage's data (weights, a tokenizer file) goes beside it. Blocking file I/O on the driver; failures are
 * Spark's (an existing path without overwrite, an unreadable directory).
 */
public final class StageIO {
    private StageIO() {
    }

    /** Writes {@code path/metadata} with {@code paramsWriter} (a stage's {@code DefaultParamsWritable.super.write()}). */
    public static void saveParams(MLWriter paramsWriter, SparkSession spark, String path) {
        try {
            paramsWriter.session(spark).save(path);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /** A stage instance of the class named in {@code path/metadata}, with its uid and Params restored. */
    public static <T> T loadParams(SparkSession spark, String path) {
        return new DefaultParamsReadable<T>() { }.read().session(spark).load(path);
    }

    /** The session's Hadoop configuration as plain entries. */
    public static Map<String, String> hadoopConf(SparkSession spark) {
        return SparkHadoop.confMap(spark);
    }

    /** {@code dir/name}. */
    public static String child(String dir, String name) {
        return org.sparkatron.data.io.DataPaths.child(dir, name);
    }
}
