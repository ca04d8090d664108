package org.sparkatron.data.spark;

import java.util.ArrayList;
import java.util.List;
import org.apache.spark.SparkConf;
import org.apache.spark.sql.SparkSession;

/**
 * Starting Spark from a plain {@code java} command line. Spark 4 on Java 17 needs its {@code --add-opens}
 * list; {@code spark-submit} adds it, a bare {@code java -cp} does not. {@link #relaunchIfNeeded}
 * restarts the same main class in a child JVM with the options when they are missing (inheriting I/O
 * and returning its exit status), so {@code ./sparkatron prepare} works without extra flags.
 */
public final class SparkJvm {
    /** Spark's own list (see /work/shared/LIBRARIES.md and Spark's JavaModuleOptions). */
    static final List<String> OPENS = List.of(
            "java.base/java.lang", "java.base/java.lang.invoke", "java.base/java.lang.reflect", "java.base/java.io",
            "java.base/java.net", "java.base/java.nio", "java.base/java.util", "java.base/java.util.concurrent",
            "java.base/java.util.concurrent.atomic", "java.base/jdk.internal.ref", "java.base/sun.nio.ch",
            "java.base/sun.nio.cs", "java.base/sun.security.action", "java.base/sun.util.calendar",
            "java.security.jgss/sun.security.krb5");

    private SparkJvm() {
    }

    /** The JVM options Spark needs on Java 17: the opens above plus Spark's two reflection flags. */
    public static List<String> options() {
        List<String> o = new ArrayList<>();
        for (String open : OPENS) {
            o.add("--add-opens=" + open + "=ALL-UNNAMED");
        }
        o.add("-Djdk.reflect.useDirectMethodHandle=false");
        o.add("-Dio.netty.tryReflectionSetAccessible=true");
        return o;
    }

    /**
     * Quiet Spark logging for the command-line tools (Spark at WARN, so progress lines are not buried),
     * unless the user configured log4j2. Call before the first Spark class loads.
     */
    public static void quietLogging() {
        quietLogging(new String[0]);
    }

    /**
     * As {@link #quietLogging()}; log lines carry no stack traces (and Spark's task-failure warnings, whose
     * text is a stack trace, are off) unless {@code argv} holds {@code --verbose}: the command's own error
     * line says what failed.
     */
    public static void quietLogging(String[] argv) {
        if (System.getProperty("log4j2.configurationFile") == null && System.getProperty("log4j.configurationFile") == null) {
            boolean verbose = java.util.Arrays.asList(argv).contains("--verbose") || Boolean.getBoolean("sparkatron.verbose");
            System.setProperty("log4j2.configurationFile", "org/sparkatron/data/spark/log4j2-cli" + (verbose ? "-verbose" : "") + ".properties");
            quietSparkDefaults();
        }
    }

    /**
     * Under {@code spark-submit} log4j2 is configured before our main runs: when that configuration is Spark's
     * built-in default (INFO everywhere, the user named none), Spark, Hadoop and Jetty go to WARN so the
     * progress lines are not buried under about a thousand INFO lines. A user's own log4j2 configuration is
     * left alone. Does nothing where log4j2-core is not the logging backend.
     */
    private static void quietSparkDefaults() {
        try {
            if (!(org.apache.logging.log4j.LogManager.getContext(false) instanceof org.apache.logging.log4j.core.LoggerContext ctx)) {
                return;
            }
            String source = String.valueOf(ctx.getConfiguration().getConfigurationSource().getLocation());
            if (source.contains("log4j2-defaults.properties")) {
                for (String name : List.of("org.apache.spark", "org.sparkproject", "org.apache.hadoop", "org.apache.parquet")) {
                    org.apache.logging.log4j.core.config.Configurator.setLevel(name, org.apache.logging.log4j.Level.WARN);
                }
            }
        } catch (LinkageError | RuntimeException e) {
            // another logging backend: nothing to quiet here
        }
    }

    /** Whether this JVM already has the opens Spark needs. */
    static boolean hasOpens() {
        return Object.class.getModule().isOpen("sun.nio.ch", SparkJvm.class.getModule());
    }

    /**
     * If the opens are missing, runs {@code main} again in a child JVM that has them, waits for it and
     * exits with its status (never returns then). Returns false when nothing needed doing.
     */
    public static boolean relaunchIfNeeded(Class<?> main, String[] args) throws Exception {
        if (hasOpens()) {
            return false;
        }
        String javaBin = ProcessHandle.current().info().command().orElse("java");
        List<String> cmd = new ArrayList<>();
        cmd.add(javaBin);
        cmd.addAll(java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments());
        cmd.addAll(options());
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(main.getName());
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).inheritIO().start();
        Runtime.getRuntime().addShutdownHook(new Thread(p::destroy)); // ^C on the parent stops the child
        System.exit(p.waitFor());
        return true;
    }

    /**
     * A session for a command-line job: the master given, else the one {@code spark-submit} set, else
     * {@code local[*]}; the web UI off unless configured (a CLI job needs no port).
     */
    public static SparkSession session(String appName, String master) {
        return session(appName, new SparkOptions(master, java.util.Map.of(), new String[0]));
    }

    /** As {@link #session(String, String)} with {@code options}' master and Spark settings. */
    public static SparkSession session(String appName, SparkOptions options) {
        SparkConf conf = new SparkConf();
        SparkSession.Builder b = SparkSession.builder().appName(appName);
        if (options.master() != null) {
            b.master(options.master());
        } else if (!conf.contains("spark.master")) {
            b.master("local[*]");
        }
        if (!conf.contains("spark.ui.enabled") && !options.settings().containsKey("spark.ui.enabled")) {
            b.config("spark.ui.enabled", "false");
        }
        options.settings().forEach(b::config);
        return b.getOrCreate();
    }
}
