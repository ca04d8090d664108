package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.fabric8.kubernetes.api.model.Container;
import io.fabric8.kubernetes.api.model.Quantity;
import io.fabric8.kubernetes.client.KubernetesClient;
import io.fabric8.kubernetes.client.KubernetesClientBuilder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.SparkConf;
import org.apache.spark.deploy.k8s.KubernetesUtils;
import org.apache.spark.deploy.k8s.SparkPod;
import org.apache.spark.internal.config.ConfigEntry$;
import org.apache.spark.resource.ResourceProfile;
import org.apache.spark.resource.ResourceProfile$;
import org.apache.spark.util.Utils$;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import scala.Option;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Every recipe in {@code deploy/} parsed by the code that reads it in production and checked against what
 * Sparkatron needs: Spark's {@code spark-defaults.conf} reader, its registry of configuration keys (core,
 * Kubernetes, YARN: a typo is an unknown key), its default resource profile (the GPU settings are
 * consistent), the stage-level scheduling decision of the training stage, Spark's own Kubernetes pod-template
 * loader, Hadoop's XML configuration reader, and the training configs through {@link TrainConfig} and the
 * layout check.
 */
class DeployRecipesTest {
    private static final Path ROOT = Path.of(System.getProperty("sparkatron.root", "..")).toAbsolutePath().normalize();
    private static final Path DEPLOY = ROOT.resolve("deploy");
    private static final String VERSION = System.getProperty("sparkatron.version", "0.1.0-SNAPSHOT");
    private static final ObjectMapper JSON = new ObjectMapper();
    /** Keys Spark reads without a registered entry: pattern families and a few raw ones. */
    private static final List<Pattern> FAMILIES = List.of(
            Pattern.compile("spark\\.(driver|executor|task|worker)\\.resource\\.[a-z0-9.]+\\.(amount|discoveryScript|vendor)"),
            Pattern.compile("spark\\.(executorEnv|hadoop|kubernetes\\.driverEnv|yarn\\.appMasterEnv)\\..+"),
            Pattern.compile("spark\\.kubernetes\\.(driver|executor)\\.(label|annotation|node\\.selector|secrets|volumes)\\..+"),
            Pattern.compile("spark\\.master"));

    @BeforeAll
    static void registerSparkKeys() throws Exception {
        // Scala objects register their configuration entries when they initialise
        for (String holder : List.of("org.apache.spark.internal.config.package$", "org.apache.spark.deploy.k8s.Config$",
                "org.apache.spark.deploy.yarn.config.package$")) {
            Class.forName(holder).getField("MODULE$").get(null);
        }
    }

    /** A spark-defaults.conf as spark-submit reads it. */
    static Map<String, String> sparkDefaults(Path file) {
        return new LinkedHashMap<>(CollectionConverters.asJava(Utils$.MODULE$.getPropertiesFromFile(file.toString())));
    }

    /** Every key is one Spark or Sparkatron reads. */
    static void assertKnownKeys(Path file, Map<String, String> conf) {
        for (String k : conf.keySet()) {
            boolean known = ConfigEntry$.MODULE$.findEntry(k) != null || FAMILIES.stream().anyMatch(p -> p.matcher(k).matches())
                    || k.equals(GpuScheduling.CONF) || k.equals(DistributedTraining.SLOT_WAIT_CONF);
            assertTrue(known, file + ": '" + k + "' is not a Spark setting (a typo?)");
        }
    }

    /** What every GPU recipe must get right for Sparkatron; returns the conf. */
    static SparkConf checkApplication(Path file, Map<String, String> settings) {
        assertKnownKeys(file, settings);
        SparkConf conf = new SparkConf(false);
        settings.forEach(conf::set);
        DistributedTraining.checkDynamicAllocation(conf); // barrier stages need a fixed set of executors
        assertTrue(conf.get("spark.executor.extraJavaOptions", "").contains("--add-modules=jdk.incubator.vector"),
                file + ": the executors need the Vector API module");
        ResourceProfile$.MODULE$.clearDefaultProfile();
        try {
            ResourceProfile rp = ResourceProfile$.MODULE$.getOrCreateDefaultProfile(conf); // Spark's own resource validation
            assertTrue(rp.executorResources().contains("gpu"), file + ": executors get GPUs");
        } finally {
            ResourceProfile$.MODULE$.clearDefaultProfile();
        }
        GpuScheduling.Decision d = GpuScheduling.decide(conf, conf.get("spark.master"));
        boolean onePerTask = "1".equals(conf.get("spark.task.resource.gpu.amount", null));
        assertTrue(onePerTask || d.profile() != null, file + ": the training stage gets one GPU per rank: " + d.reason());
        return conf;
    }

    @Test
    void standalone() throws Exception {
        Path file = DEPLOY.resolve("standalone/spark-defaults.conf");
        SparkConf conf = checkApplication(file, sparkDefaults(file));
        assertTrue(conf.get("spark.master").startsWith("spark://"));
        // the Workers' side: SPARK_WORKER_OPTS in spark-env.sh offers what the executors ask for
        String env = Files.readString(DEPLOY.resolve("standalone/spark-env.sh"));
        Matcher m = Pattern.compile("SPARK_WORKER_OPTS=\"([^\"]*)\"").matcher(env);
        assertTrue(m.find(), "spark-env.sh sets SPARK_WORKER_OPTS");
        Map<String, String> worker = new LinkedHashMap<>();
        for (String opt : m.group(1).trim().split("\\s+")) {
            assertTrue(opt.startsWith("-D") && opt.contains("="), "a -Dkey=value option: " + opt);
            worker.put(opt.substring(2, opt.indexOf('=')), opt.substring(opt.indexOf('=') + 1));
        }
        assertKnownKeys(DEPLOY.resolve("standalone/spark-env.sh"), worker);
        assertTrue(Double.parseDouble(worker.get("spark.worker.resource.gpu.amount"))
                >= Double.parseDouble(conf.get("spark.executor.resource.gpu.amount")), "a Worker offers the executor's GPUs");
        assertEquals(conf.get("spark.executor.resource.gpu.discoveryScript"), worker.get("spark.worker.resource.gpu.discoveryScript"));
    }

    @Test
    void yarn() throws Exception {
        Path file = DEPLOY.resolve("yarn/spark-defaults.conf");
        SparkConf conf = checkApplication(file, sparkDefaults(file));
        assertEquals("yarn", conf.get("spark.master"));
        // the discovery script is shipped into each container's working directory
        String script = conf.get("spark.executor.resource.gpu.discoveryScript");
        assertTrue(script.startsWith("./") && conf.get("spark.yarn.dist.files").endsWith(script.substring(2)), script);
        assertTrue(Files.isRegularFile(ROOT.resolve(conf.get("spark.yarn.dist.files"))), "the shipped script exists");
        Configuration yarn = new Configuration(false);
        for (String xml : List.of("resource-types.xml", "yarn-site.xml", "capacity-scheduler.xml")) {
            yarn.addResource(new org.apache.hadoop.fs.Path(DEPLOY.resolve("yarn/" + xml).toUri()));
        }
        assertEquals("yarn.io/gpu", yarn.get("yarn.resource-types"));
        assertEquals("yarn.io/gpu", yarn.get("yarn.nodemanager.resource-plugins"));
        assertEquals("org.apache.hadoop.yarn.util.resource.DominantResourceCalculator", yarn.get("yarn.scheduler.capacity.resource-calculator"));
        assertEquals("yarn.io/gpu", conf.get("spark.yarn.resourceGpuDeviceName", "yarn.io/gpu"), "Spark's name for YARN's GPUs");
    }

    @Test
    void kubernetes() throws Exception {
        Path file = DEPLOY.resolve("kubernetes/spark-defaults.conf");
        SparkConf conf = checkApplication(file, sparkDefaults(file));
        assertTrue(conf.get("spark.master").startsWith("k8s://"));
        assertEquals("nvidia.com", conf.get("spark.executor.resource.gpu.vendor"), "Kubernetes needs the device plugin's vendor");
        Path template = ROOT.resolve(conf.get("spark.kubernetes.executor.podTemplateFile"));
        SparkPod pod;
        try (KubernetesClient client = new KubernetesClientBuilder().build()) { // parses locally: no API server
            pod = KubernetesUtils.loadPodFromTemplate(client, template.toString(),
                    Option.apply(conf.get("spark.kubernetes.executor.podTemplateContainerName")), conf);
        }
        Container c = pod.container();
        assertEquals(conf.get("spark.kubernetes.executor.podTemplateContainerName"), c.getName(), "Spark found the executor container");
        Quantity gpus = c.getResources().getLimits().get("nvidia.com/gpu");
        assertNotNull(gpus, "the template limits nvidia.com/gpu");
        assertEquals(Double.parseDouble(conf.get("spark.executor.resource.gpu.amount")), Double.parseDouble(gpus.getAmount()),
                "the template's GPUs are the executor's");
        assertTrue(pod.pod().getSpec().getTolerations().stream().anyMatch(t -> "nvidia.com/gpu".equals(t.getKey())), "tolerates GPU nodes");
        // the image holds the jar and the discovery script where the conf says
        String docker = Files.readString(DEPLOY.resolve("kubernetes/Dockerfile"));
        assertTrue(docker.contains("/opt/sparkatron/gpu-discovery.sh") && conf.get("spark.executor.resource.gpu.discoveryScript")
                .equals("/opt/sparkatron/gpu-discovery.sh"), "the discovery script is in the image");
        assertTrue(docker.contains("sparkatron-spark4_2.13-" + VERSION + ".jar"), "the image takes this build's jar");
        assertTrue(docker.contains("FROM apache/spark:" + org.apache.spark.package$.MODULE$.SPARK_VERSION() + "-scala2.13-java17"),
                "the image's Spark is the one the jar was built for");
    }

    @Test
    void databricks() throws Exception {
        JsonNode cluster = JSON.readTree(DEPLOY.resolve("databricks/cluster.json").toFile());
        String runtime = cluster.get("spark_version").asText();
        Matcher m = Pattern.compile("(\\d+)\\.(\\d+)\\.x-gpu-ml-scala2\\.13").matcher(runtime);
        assertTrue(m.matches(), "a GPU ML runtime on Scala 2.13: " + runtime);
        assertTrue(Integer.parseInt(m.group(1)) >= 17, "Databricks Runtime 17+ is Spark 4: " + runtime);
        Map<String, String> sparkConf = new LinkedHashMap<>();
        cluster.get("spark_conf").fields().forEachRemaining(e -> sparkConf.put(e.getKey(), e.getValue().asText()));
        sparkConf.put("spark.master", "spark://databricks:7077"); // Databricks runs standalone-style clusters
        checkApplication(DEPLOY.resolve("databricks/cluster.json"), sparkConf);
        assertEquals("/Volumes/main/default/sparkatron/sparkatron-spark4_2.13-" + VERSION + ".jar",
                cluster.get("libraries").get(0).get("jar").asText(), "the library is this build's jar");
    }

    @Test
    void emr() throws Exception {
        Map<String, Map<String, String>> byClass = new LinkedHashMap<>();
        for (JsonNode c : JSON.readTree(DEPLOY.resolve("emr/configurations.json").toFile())) {
            Map<String, String> props = new LinkedHashMap<>();
            c.get("Properties").fields().forEachRemaining(e -> props.put(e.getKey(), e.getValue().asText()));
            byClass.put(c.get("Classification").asText(), props);
        }
        Map<String, String> spark = new LinkedHashMap<>(byClass.get("spark-defaults"));
        spark.put("spark.master", "yarn"); // EMR on EC2 runs Spark on YARN
        checkApplication(DEPLOY.resolve("emr/configurations.json"), spark);
        assertEquals("yarn.io/gpu", byClass.get("yarn-site").get("yarn.resource-types"));
        assertEquals("yarn.io/gpu", byClass.get("yarn-site").get("yarn.nodemanager.resource-plugins"));
        assertEquals("org.apache.hadoop.yarn.util.resource.DominantResourceCalculator",
                byClass.get("capacity-scheduler").get("yarn.scheduler.capacity.resource-calculator"));
        assertTrue(byClass.containsKey("container-executor"), "GPU isolation in the container executor");
    }

    /** The training configs parse, and their layouts are valid for their models. */
    @Test
    void trainingConfigs() throws Exception {
        for (String name : List.of("job.example.json", "gpt2-124m.json")) {
            TrainConfig cfg = TrainConfig.fromJson(JSON.readTree(DEPLOY.resolve(name).toFile()));
            Layout.validate(cfg);
            assertEquals(50257, cfg.model().vocabSize(), name + ": GPT-2's vocabulary, for GPT-2-tokenized data");
        }
    }
}
