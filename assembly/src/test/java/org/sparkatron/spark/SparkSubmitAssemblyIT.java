package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.SimpleGroupFactory;
import org.apache.parquet.hadoop.ParquetWriter;
import org.apache.parquet.hadoop.example.ExampleParquetWriter;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.MessageTypeParser;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

/**
 * The assembly jar as a user ships it, on a real standalone cluster (Master + 2 Workers, 1 core and 1 fake
 * GPU each, addresses "3" and "5") whose SPARK_HOME holds only what a cluster provides (Spark, Scala,
 * Hadoop: the assembly module's provided classpath): no Sparkatron class and none of its dependencies.
 * {@code spark-submit} is Spark's launcher, reading the site's {@code spark-defaults.conf}, which gives the
 * executors GPUs but the tasks none: the training stage must ask for them itself (stage-level scheduling).
 *
 * <ul>
 *   <li>the README's spark-submit command, exactly as written there, with MASTER, DATA and OUT set;</li>
 *   <li>{@code --packages} with the jar's Maven coordinates, from a file repository laid out as
 *       {@code mvn deploy} lays one out, the main class coming from the resolved jar;</li>
 *   <li>{@code prepare} with both tokenizers (relocated jtokkit, DJL's native library) from the jar.</li>
 * </ul>
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(value = 900, unit = TimeUnit.SECONDS)
class SparkSubmitAssemblyIT {
    /** Kept after the run (target/it-work): the cluster's and drivers' logs are what one reads when this fails. */
    private final Path dir = Path.of(System.getProperty("sparkatron.itDir"));
    private final Path root = Path.of(System.getProperty("sparkatron.root")).toAbsolutePath().normalize();
    private final Path assembly = Path.of(System.getProperty("sparkatron.assembly"));
    private StandaloneCluster cluster;
    private Path data;

    @BeforeAll
    void startCluster() throws Exception {
        assertTrue(Files.isRegularFile(assembly), "the assembly jar is built: " + assembly);
        if (Files.exists(dir)) {
            try (var old = Files.walk(dir)) {
                old.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
        Files.createDirectories(dir);
        List<Path> provided = new ArrayList<>();
        for (String e : Files.readString(Path.of(System.getProperty("sparkatron.clusterClasspath"))).strip().split(java.io.File.pathSeparator)) {
            provided.add(Path.of(e));
        }
        assertTrue(provided.stream().anyMatch(p -> p.getFileName().toString().startsWith("spark-core_")), "Spark is provided");
        assertFalse(provided.stream().anyMatch(p -> p.toString().contains("sparkatron") || p.getFileName().toString().startsWith("jtokkit")
                || p.getFileName().toString().startsWith("openblas")), "no Sparkatron jar or dependency on the cluster: " + provided);
        StandaloneCluster.progress("assembly", "starting a standalone cluster (Master + 2 Workers) with Spark's jars only");
        cluster = new StandaloneCluster(dir, provided, "3", "5");
        Map<String, String> site = new LinkedHashMap<>();
        site.put("spark.driver.host", "127.0.0.1");
        site.put("spark.driver.bindAddress", "127.0.0.1");
        site.put("spark.driver.memory", "512m");
        site.put("spark.ui.enabled", "false");
        site.put("spark.executor.memory", "512m");
        site.put("spark.executor.cores", "1");
        site.put("spark.driver.defaultJavaOptions", String.join(" ", StandaloneCluster.LIGHT_JVM)); // the driver only coordinates
        site.put("spark.cores.max", "2");
        site.put("spark.executor.resource.gpu.amount", "1"); // executors have GPUs; tasks ask for none
        site.put("spark.scheduler.minRegisteredResourcesRatio", "1.0");
        // generous waits: on a loaded 2-core machine executor JVMs can take a minute to register
        site.put("spark.scheduler.maxRegisteredResourcesWaitingTime", "150s");
        site.put(DistributedTraining.SLOT_WAIT_CONF, "150");
        cluster.installSparkSubmit(site);
        data = writeTokens(dir.resolve("tokens.parquet"), SyntheticData.walks(400, 7));
    }

    @AfterAll
    void stopCluster() {
        if (cluster != null) {
            cluster.close();
        }
    }

    /** The README's spark-submit command: the indented lines from "spark-submit" to the first without a trailing backslash. */
    static String readmeCommand(Path readme) throws Exception {
        List<String> lines = Files.readAllLines(readme);
        StringBuilder cmd = new StringBuilder();
        for (int i = 0; i < lines.size(); i++) {
            if (lines.get(i).startsWith("    spark-submit ")) {
                assertEquals(0, cmd.length(), "one spark-submit command in the README");
                for (int j = i; ; j++) {
                    String l = lines.get(j).strip();
                    cmd.append(l).append('\n');
                    if (!l.endsWith("\\")) {
                        break;
                    }
                }
            }
        }
        assertTrue(cmd.length() > 0, "the README has a spark-submit command");
        return cmd.toString();
    }

    @Test
    void theReadmeCommandTrainsOnTheClusterAndTheTrainingStageAsksForTheGpus() throws Exception {
        String command = readmeCommand(root.resolve("README.md"));
        StandaloneCluster.progress("readme", "running the README's command:\n" + command);
        Path out = dir.resolve("readme-out");
        Process p = cluster.shell("readme", root, command, Map.of("MASTER", cluster.master(), "DATA", data.toString(), "OUT", out.toString()));
        assertTrue(cluster.await("readme", p, 600), () -> "driver did not finish: " + read(cluster.log("readme")) + cluster.diagnostics());
        String log = read(cluster.log("readme"));
        assertEquals(0, p.exitValue(), () -> log + cluster.diagnostics());
        JsonNode example = TrainConfig.JSON.readTree(root.resolve("deploy/job.example.json").toFile());
        int steps = example.get("steps").asInt();
        assertTrue(log.contains("[sparkatron] step " + steps + "/" + steps), "live progress: " + log);
        assertTrue(log.contains("stage-level scheduling: 1 GPU per training task"), "the training stage's own profile: " + log);
        checkRanks(out, example.get("dp").asInt());
        assertEquals(steps, Files.readAllLines(out.resolve("metrics.jsonl")).size());
        assertTrue(Files.size(out.resolve("model.safetensors")) > 4L * 50257 * 64, "the model was saved");
    }

    @Test
    void packagesResolvesTheJarByItsMavenCoordinatesFromARepository() throws Exception {
        String version = System.getProperty("sparkatron.version");
        Path repo = dir.resolve("maven-repo");
        // the layout `mvn deploy` writes: the parent POM, the assembly's POM (dependencies reduced to the
        // provided Spark ones) and its jar
        Path parent = Files.createDirectories(repo.resolve("org/sparkatron/sparkatron-parent/" + version));
        Files.copy(root.resolve("pom.xml"), parent.resolve("sparkatron-parent-" + version + ".pom"));
        Path art = Files.createDirectories(repo.resolve("org/sparkatron/sparkatron-spark4_2.13/" + version));
        Files.copy(Path.of(System.getProperty("sparkatron.reducedPom")), art.resolve("sparkatron-spark4_2.13-" + version + ".pom"));
        Files.copy(assembly, art.resolve("sparkatron-spark4_2.13-" + version + ".jar"));
        Path out = dir.resolve("packages-out");
        String command = String.join(" ", "spark-submit --master \"$MASTER\"",
                "--packages org.sparkatron:sparkatron-spark4_2.13:" + version, "--repositories \"file://$REPO\"",
                "--conf spark.jars.ivy=\"$IVY\"", "--conf spark.executor.extraJavaOptions=--add-modules=jdk.incubator.vector",
                "--class org.sparkatron.spark.TrainMain spark-internal",
                "--config deploy/job.example.json --input \"$DATA\" --output \"$OUT\" --steps 6");
        Process p = cluster.shell("packages", root, command, Map.of("MASTER", cluster.master(), "DATA", data.toString(),
                "OUT", out.toString(), "REPO", repo.toString(), "IVY", dir.resolve("ivy").toString()));
        assertTrue(cluster.await("packages", p, 600), () -> "driver did not finish: " + read(cluster.log("packages")) + cluster.diagnostics());
        String log = read(cluster.log("packages"));
        assertEquals(0, p.exitValue(), () -> log + cluster.diagnostics());
        assertTrue(log.contains("org.sparkatron#sparkatron-spark4_2.13;" + version + " from"), "resolved by Ivy: " + log);
        assertTrue(log.contains("[sparkatron] step 6/6"), log);
        checkRanks(out, 2);
    }

    /**
     * The tokenizers from the jar: GPT-2's (jtokkit, relocated, its vocabulary a resource) and a Hugging Face
     * tokenizer.json (DJL's native library, extracted from the jar), through {@code prepare} in local mode.
     */
    @Test
    void prepareTokenizesWithBothTokenizersFromTheJar() throws Exception {
        Path text = dir.resolve("corpus.txt");
        Files.writeString(text, "Hello world\nhello world again\n");
        Path tokenizer = root.resolve("data-loaders/src/test/resources/tokenizer/tiny_bpe_tokenizer.json");
        for (String tok : List.of("gpt2", tokenizer.toString())) {
            String name = "prepare-" + (tok.equals("gpt2") ? "gpt2" : "hf");
            Path out = dir.resolve(name + "-out");
            String command = "spark-submit --master 'local[1]' --class org.sparkatron.data.spark.PrepareJob \"$JAR\" "
                    + "--input \"$TEXT\" --format text --tokenizer \"$TOK\" --output \"$OUT\"";
            Process p = cluster.shell(name, root, command, Map.of("JAR", assembly.toString(), "TEXT", text.toString(), "TOK", tok,
                    "OUT", out.toString()));
            assertTrue(cluster.await(name, p, 300), () -> "prepare did not finish: " + read(cluster.log(name)));
            String log = read(cluster.log(name));
            assertEquals(0, p.exitValue(), log);
            assertTrue(log.contains("prepare: 2 documents, "), log);
            JsonNode manifest = TrainConfig.JSON.readTree(out.resolve("manifest.json").toFile());
            assertEquals(2, manifest.get("documents").asLong(), manifest.toString());
        }
    }

    /** Each rank ran in its own executor JVM and bound the GPU its Worker discovered. */
    private static void checkRanks(Path out, int ranks) throws Exception {
        Set<String> devices = new HashSet<>();
        Set<Long> pids = new HashSet<>();
        for (JsonNode r : TrainConfig.JSON.readTree(Files.readString(out.resolve("ranks.json")))) {
            devices.add(r.get("device").asText().split(";")[0]);
            pids.add(r.get("pid").asLong());
        }
        assertEquals(ranks, pids.size());
        assertEquals(Set.of("gpu:3", "gpu:5"), devices);
    }

    /** A Parquet file with one array&lt;int&gt; column "tokens", written with Parquet's own example writer. */
    static Path writeTokens(Path file, List<int[]> docs) throws Exception {
        MessageType schema = MessageTypeParser.parseMessageType(
                "message spark_schema { optional group tokens (LIST) { repeated group list { optional int32 element; } } }");
        SimpleGroupFactory groups = new SimpleGroupFactory(schema);
        try (ParquetWriter<Group> w = ExampleParquetWriter.builder(new org.apache.hadoop.fs.Path(file.toUri()))
                .withType(schema).withConf(new Configuration()).build()) {
            for (int[] d : docs) {
                Group g = groups.newGroup();
                Group list = g.addGroup("tokens");
                for (int id : d) {
                    list.addGroup("list").append("element", id);
                }
                w.write(g);
            }
        }
        return file;
    }

    private static String read(Path p) {
        try {
            return Files.readString(p);
        } catch (java.io.IOException e) {
            return "(cannot read " + p + ": " + e + ")";
        }
    }
}
