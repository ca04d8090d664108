package org.sparkatron.spark;

import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.List;

/**
 * Spark 4 on Java 17 needs {@code --add-opens} for several JDK packages (Kryo, Netty, off-heap memory).
 * spark-submit passes them; a plain {@code java} launch (the {@code ./sparkatron} wrapper) may not. The
 * command-line entry points call {@link #relaunchIfNeeded}: when the options are missing, the same main
 * class is re-run in a child JVM with them (same classpath, JVM options and arguments), and this JVM exits
 * with the child's status.
 */
final class SparkJvm {
    /** Spark's list for Java 17 (as in the parent pom's sparkatron.jvmOpts and Spark's launcher). */
    static final List<String> OPTIONS = List.of(
            "--add-opens=java.base/java.lang=ALL-UNNAMED", "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
            "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED", "--add-opens=java.base/java.io=ALL-UNNAMED",
            "--add-opens=java.base/java.net=ALL-UNNAMED", "--add-opens=java.base/java.nio=ALL-UNNAMED",
            "--add-opens=java.base/java.util=ALL-UNNAMED", "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
            "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED", "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
            "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED", "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
            "--add-opens=java.base/sun.security.action=ALL-UNNAMED", "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
            "--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED", "-Djdk.reflect.useDirectMethodHandle=false",
            "-Dio.netty.tryReflectionSetAccessible=true");

    private SparkJvm() {
    }

    static boolean hasOpens() {
        return Object.class.getModule().isOpen("java.nio", SparkJvm.class.getModule())
                && Object.class.getModule().isOpen("sun.nio.ch", SparkJvm.class.getModule());
    }

    /** Returns normally when this JVM has the options; otherwise runs {@code main} in a child JVM and exits. */
    static void relaunchIfNeeded(Class<?> main, String[] args) throws Exception {
        if (hasOpens()) {
            return;
        }
        List<String> cmd = new ArrayList<>();
        cmd.add(ProcessHandle.current().info().command().orElse(System.getProperty("java.home") + "/bin/java"));
        cmd.addAll(ManagementFactory.getRuntimeMXBean().getInputArguments());
        cmd.addAll(OPTIONS);
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(main.getName());
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).inheritIO().start();
        Runtime.getRuntime().addShutdownHook(new Thread(p::destroy));
        System.exit(p.waitFor());
    }
}
