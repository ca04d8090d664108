package org.sparkatron.spark;

import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.jar.Attributes;
import java.util.jar.JarFile;
import java.util.jar.JarOutputStream;
import java.util.jar.Manifest;
import java.util.zip.ZipEntry;
import org.sparkatron.data.spark.SparkJvm;

/**
 * A real Spark standalone cluster for tests, without a Spark distribution (see /work/shared/SPARK.md):
 * a SPARK_HOME whose jars/ holds this test's classpath (class folders packed into jars), a Master and
 * Workers started from the spark-core classes, each Worker with a fake GPU discovery script that reports
 * its own GPU address. Executors run in their own JVMs, forked by the Workers. Everything binds to
 * 127.0.0.1. {@link #close} kills every process it started (and their children) by pid.
 *
 * <p>With an explicit list of jars (the assembly's integration tests) SPARK_HOME holds only those, i.e. what
 * a cluster provides (Spark, Scala, Hadoop), and the application brings Sparkatron in its own jar;
 * {@link #installSparkSubmit} then adds a {@code bin/spark-submit} that works as a distribution's does.
 */
final class StandaloneCluster implements AutoCloseable {
    final Path home;
    int masterPort;
    private final Path dir;
    private final List<Process> processes = new ArrayList<>();
    final List<Process> workers = new ArrayList<>();

    StandaloneCluster(Path dir, String... gpuAddresses) throws Exception {
        this(dir, null, gpuAddresses);
    }

    /** A cluster whose SPARK_HOME/jars holds exactly {@code sparkJars} (null: this JVM's whole classpath). */
    StandaloneCluster(Path dir, List<Path> sparkJars, String... gpuAddresses) throws Exception {
        this.dir = dir;
        this.home = dir.resolve("spark-home");
        // processes die with this JVM even if the suite never reaches close()
        Runtime.getRuntime().addShutdownHook(new Thread(this::close));
        try {
            setUp(sparkJars == null ? classpath() : sparkJars.stream().map(Path::toString).toList(), gpuAddresses);
        } catch (Exception | Error e) {
            close();
            throw e;
        }
    }

    private void setUp(java.util.Collection<String> jars, String... gpuAddresses) throws Exception {
        Files.createDirectories(home.resolve("jars"));
        int i = 0;
        for (String entry : jars) {
            File f = new File(entry);
            if (f.getName().equals("test-classes")) {
                continue; // test classes (and their quiet log4j2-test config) stay out of the cluster
            }
            if (f.isDirectory()) {
                jarUp(f.toPath(), home.resolve("jars/sparkatron-" + (i++) + "-" + f.getParentFile().getParentFile().getName() + ".jar"));
            } else if (f.getName().endsWith(".jar") && f.isFile()) {
                Path link = home.resolve("jars/" + f.getName());
                if (!Files.exists(link)) {
                    Files.createSymbolicLink(link, f.toPath());
                }
            }
        }
        try (ServerSocket s = new ServerSocket(0)) {
            masterPort = s.getLocalPort();
        }
        Process master = start("master", List.of("-Dspark.master.rest.enabled=false"), "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1", "--port", String.valueOf(masterPort), "--webui-port", "0");
        awaitLog("master", master, "I have been elected leader", 60);
        for (int w = 0; w < gpuAddresses.length; w++) {
            Path script = dir.resolve("gpu_" + w + ".sh");
            // single-quoted JSON: unquoted braces would be expanded by bash
            Files.writeString(script, "#!/usr/bin/env bash\necho '{\"name\":\"gpu\",\"addresses\":[\"" + gpuAddresses[w] + "\"]}'\n");
            script.toFile().setExecutable(true);
            Path work = Files.createDirectories(dir.resolve("work_" + w));
            Process p = start("worker" + w, List.of("-Dspark.worker.resource.gpu.amount=1",
                            "-Dspark.worker.resource.gpu.discoveryScript=" + script),
                    "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", "0", "--webui-port", "0",
                    "--cores", "1", "--memory", "1g", "--work-dir", work.toString(), master());
            workers.add(p);
        }
        for (int w = 0; w < gpuAddresses.length; w++) {
            awaitLog("worker" + w, workers.get(w), "Successfully registered with master", 60);
        }
    }

    String master() {
        return "spark://127.0.0.1:" + masterPort;
    }

    /**
     * Writes {@code SPARK_HOME/bin/spark-submit} (what Spark's own {@code bin/spark-class} does: Spark's launcher
     * builds the driver's command line from the arguments and {@code conf/spark-defaults.conf}, with the
     * JVM options, memory and classpath a distribution gives, then runs it) and
     * {@code conf/spark-defaults.conf} with {@code defaults}, a site's settings. Returns the bin directory.
     */
    Path installSparkSubmit(Map<String, String> defaults) throws IOException {
        Path bin = Files.createDirectories(home.resolve("bin"));
        Path submit = bin.resolve("spark-submit");
        Files.writeString(submit, String.join("\n",
                "#!/usr/bin/env bash",
                "# Spark's bin/spark-submit + bin/spark-class: the launcher prints messages, a line holding NUL, then the",
                "# driver's command line NUL-separated; the last field is the launcher's exit status.",
                "build_command() {",
                "  \"$JAVA_HOME/bin/java\" -Xmx128m " + String.join(" ", LIGHT_JVM) + " -cp \"$SPARK_HOME/jars/*\" org.apache.spark.launcher.Main org.apache.spark.deploy.SparkSubmit \"$@\"",
                "  printf '%d\\0' $?",
                "}",
                "CMD=(); DELIM=$'\\n'; STARTED=false",
                "while IFS= read -d \"$DELIM\" -r ARG; do",
                "  if $STARTED; then CMD+=(\"$ARG\"); elif [ -z \"$ARG\" ]; then DELIM=''; STARTED=true; else echo \"$ARG\"; fi",
                "done < <(build_command \"$@\")",
                "LAST=$((${#CMD[@]} - 1))",
                "[ \"$LAST\" -ge 0 ] && [ \"${CMD[$LAST]}\" = 0 ] || { echo \"spark-submit: the launcher failed\" >&2; exit 1; }",
                "exec \"${CMD[@]:0:$LAST}\"", ""));
        submit.toFile().setExecutable(true);
        Path conf = Files.createDirectories(home.resolve("conf"));
        StringBuilder sb = new StringBuilder("# site settings of this test cluster\n");
        defaults.forEach((k, v) -> sb.append(k).append(' ').append(v).append('\n'));
        Files.writeString(conf.resolve("spark-defaults.conf"), sb.toString());
        return bin;
    }

    /**
     * Runs {@code command} with bash in {@code workDir}, as a user's shell would after installing
     * {@link #installSparkSubmit}: spark-submit on the PATH, SPARK_HOME and JAVA_HOME set, {@code env} added;
     * output to {@code name}.log.
     */
    Process shell(String name, Path workDir, String command, Map<String, String> env) throws IOException {
        ProcessBuilder pb = new ProcessBuilder("bash", "-c", command).directory(workDir.toFile())
                .redirectErrorStream(true).redirectOutput(log(name).toFile());
        Map<String, String> e = pb.environment();
        e.put("SPARK_HOME", home.toString());
        e.put("SPARK_CONF_DIR", home.resolve("conf").toString());
        e.put("SPARK_SCALA_VERSION", "2.13");
        e.put("SPARK_LOCAL_IP", "127.0.0.1");
        e.put("SPARK_LOCAL_DIRS", Files.createDirectories(dir.resolve("local_" + name)).toString());
        e.put("JAVA_HOME", System.getProperty("java.home"));
        e.put("PATH", home.resolve("bin") + File.pathSeparator + System.getenv("PATH"));
        e.putAll(env);
        Process p = pb.start();
        processes.add(p);
        return p;
    }

    Path log(String name) {
        return dir.resolve(name + ".log");
    }

    /**
     * For the JVMs that coordinate rather than compute (Master, Workers, drivers, spark-submit's launcher): the
     * quick JIT tier only and the serial collector. On a 2-core machine their C2 compilations and GC threads
     * compete with the executors' training; with these the cluster tests need less CPU time.
     */
    static final List<String> LIGHT_JVM = List.of("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC");

    /** JVM options for any Spark JVM here: Spark's Java 17 opens plus the Vector API module. */
    static List<String> jvmOptions() {
        List<String> o = new ArrayList<>(SparkJvm.options());
        o.add("--add-modules=jdk.incubator.vector");
        o.add("-Dio.netty.allocator.type=pooled");
        return o;
    }

    /** Starts {@code main} with the cluster's classpath and environment; output goes to {@code name}.log. */
    Process start(String name, List<String> extraJvm, String main, String... args) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(System.getProperty("java.home") + "/bin/java");
        cmd.add(name.startsWith("driver") ? "-Xmx512m" : "-Xmx128m");
        cmd.addAll(jvmOptions());
        cmd.addAll(LIGHT_JVM); // executors, forked by the Workers, keep the default JIT: they train
        cmd.add("-Djava.io.tmpdir=" + Files.createDirectories(dir.resolve("tmp_" + name)));
        cmd.addAll(extraJvm);
        cmd.add("-cp");
        cmd.add(home.resolve("jars") + "/*");
        cmd.add(main);
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log(name).toFile());
        Map<String, String> env = pb.environment();
        env.put("SPARK_HOME", home.toString());
        env.put("SPARK_SCALA_VERSION", "2.13");
        env.put("SPARK_LOCAL_IP", "127.0.0.1");
        env.put("SPARK_LOCAL_DIRS", Files.createDirectories(dir.resolve("local_" + name)).toString());
        Process p = pb.start();
        processes.add(p);
        return p;
    }

    void awaitLog(String name, Process p, String marker, int seconds) throws Exception {
        long deadline = System.currentTimeMillis() + seconds * 1000L;
        while (System.currentTimeMillis() < deadline) {
            if (Files.exists(log(name)) && Files.readString(log(name)).contains(marker)) {
                return;
            }
            if (!p.isAlive()) {
                throw new IllegalStateException(name + " exited (" + p.exitValue() + "): " + Files.readString(log(name)));
            }
            Thread.sleep(200);
        }
        throw new IllegalStateException(name + " did not log '" + marker + "' within " + seconds + " s: " + Files.readString(log(name)));
    }

    /**
     * Waits up to {@code seconds} for {@code p} (logging to {@code name}.log) to end; every 30 s prints a
     * progress line with its latest {@code [sparkatron]} line, so a long cluster test is not silent.
     * Returns whether it ended.
     */
    boolean await(String name, Process p, int seconds) throws Exception {
        long start = System.currentTimeMillis();
        long deadline = start + seconds * 1000L;
        while (System.currentTimeMillis() < deadline) {
            if (p.waitFor(Math.min(30_000, Math.max(1, deadline - System.currentTimeMillis())), java.util.concurrent.TimeUnit.MILLISECONDS)) {
                return true;
            }
            progress(name, "running " + (System.currentTimeMillis() - start) / 1000 + " s: " + lastProgressLine(name));
        }
        return false;
    }

    /** The newest {@code [sparkatron]} line of {@code name}.log, or "(starting)". */
    String lastProgressLine(String name) {
        try {
            List<String> lines = Files.exists(log(name)) ? Files.readAllLines(log(name)) : List.of();
            for (int i = lines.size() - 1; i >= 0; i--) {
                if (lines.get(i).contains("[sparkatron]")) {
                    return lines.get(i).strip();
                }
            }
        } catch (IOException | java.io.UncheckedIOException e) {
            return "(log unreadable: " + e.getMessage() + ")";
        }
        return "(starting)";
    }

    /** One progress line of a long test, on the test's output. */
    static void progress(String name, String what) {
        System.out.println("[cluster test] " + name + ": " + what);
    }

    /** The executor JVMs the Workers forked. */
    List<ProcessHandle> executors() {
        List<ProcessHandle> out = new ArrayList<>();
        for (Process w : workers) {
            w.toHandle().descendants().filter(h -> h.info().commandLine().orElse("").contains("CoarseGrainedExecutorBackend"))
                    .forEach(out::add);
        }
        return out;
    }

    /** Every executor's whole stderr (under the Workers' work directories), concatenated. */
    String executorLogs() {
        StringBuilder sb = new StringBuilder();
        try (var files = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                if (Files.isRegularFile(p) && p.getFileName().toString().equals("stderr")) {
                    sb.append("\n==== ").append(dir.relativize(p)).append(" ====\n").append(Files.readString(p));
                }
            }
        } catch (IOException e) {
            sb.append("(cannot read logs: ").append(e).append(")");
        }
        return sb.toString();
    }

    /** The tail of every Worker log and executor stderr, for failure messages. */
    String diagnostics() {
        StringBuilder sb = new StringBuilder();
        try (var files = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                String n = p.getFileName().toString();
                if (Files.isRegularFile(p) && (n.startsWith("worker") && n.endsWith(".log") || n.equals("stderr"))) {
                    String text = Files.readString(p);
                    sb.append("\n==== ").append(dir.relativize(p)).append(" ====\n")
                            .append(text.substring(Math.max(0, text.length() - 3000)));
                }
            }
        } catch (IOException e) {
            sb.append("(cannot read logs: ").append(e).append(")");
        }
        return sb.toString();
    }

    @Override
    public synchronized void close() {
        for (int i = processes.size() - 1; i >= 0; i--) {
            Process p = processes.get(i);
            p.toHandle().descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        }
        // the jars/ links point into ~/.m2: removed here, JUnit's temporary-directory cleanup would warn once per link
        try (var links = Files.list(home.resolve("jars"))) {
            for (Path l : (Iterable<Path>) links::iterator) {
                if (Files.isSymbolicLink(l)) {
                    Files.delete(l);
                }
            }
        } catch (IOException e) {
            // nothing to remove
        }
    }

    /** This JVM's classpath (expanding Surefire's manifest-only booter jar if that is what it is). */
    static Set<String> classpath() throws IOException {
        Set<String> out = new LinkedHashSet<>();
        for (String e : System.getProperty("java.class.path").split(File.pathSeparator)) {
            if (new File(e).getName().startsWith("surefirebooter")) {
                try (JarFile j = new JarFile(e)) {
                    String cp = j.getManifest().getMainAttributes().getValue(Attributes.Name.CLASS_PATH);
                    for (String u : cp.split(" ")) {
                        if (!u.isBlank()) {
                            out.add(new File(java.net.URI.create(u)).getPath());
                        }
                    }
                }
            } else {
                out.add(e);
            }
        }
        return out;
    }

    private static void jarUp(Path folder, Path jar) throws IOException {
        Manifest m = new Manifest();
        m.getMainAttributes().put(Attributes.Name.MANIFEST_VERSION, "1.0");
        try (OutputStream fo = Files.newOutputStream(jar); JarOutputStream out = new JarOutputStream(fo, m);
             var walk = Files.walk(folder)) {
            for (Path p : (Iterable<Path>) walk::iterator) {
                if (Files.isRegularFile(p)) {
                    out.putNextEntry(new ZipEntry(folder.relativize(p).toString().replace('\\', '/')));
                    Files.copy(p, out);
                    out.closeEntry();
                }
            }
        }
    }
}
