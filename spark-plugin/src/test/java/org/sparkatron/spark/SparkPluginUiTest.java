package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.management.MBeanServer;
import javax.management.ObjectName;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Sparkatron plugin on a real local session with the Spark UI on: progress arrives over Spark's RPC
 * (no progress socket), the training figures are in Spark's metrics system (read back through its JMX sink),
 * and the UI's "Sparkatron" tab, loaded in headless Chromium (Debian's; the test skips where it is missing),
 * shows the loss curve with every step run so far -- while the job runs and after it ended.
 */
class SparkPluginUiTest {
    @TempDir
    Path tmp;

    private static final Pattern POINTS = Pattern.compile("data-series=\"train-step\" data-points=\"(\\d+)\"");
    private static final Pattern STEP = Pattern.compile("id=\"sparkatron-progress\" data-step=\"(\\d+)\" data-steps=\"(\\d+)\"");

    /** The page's DOM after Chromium ran its scripts. */
    private String dumpDom(String url) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + tmp.resolve("chromium-" + System.nanoTime()), "--virtual-time-budget=2000", "--dump-dom", url));
        Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        CompletableFuture<byte[]> out = CompletableFuture.supplyAsync(() -> {
            try {
                return p.getInputStream().readAllBytes();
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        });
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "chromium did not finish");
        return new String(out.get(10, TimeUnit.SECONDS), StandardCharsets.UTF_8);
    }

    private static int[] curve(String dom) {
        Matcher pts = POINTS.matcher(dom);
        Matcher step = STEP.matcher(dom);
        assertTrue(pts.find() && step.find(), "no Sparkatron curve in the page: " + dom.substring(0, Math.min(3000, dom.length())));
        return new int[] {Integer.parseInt(pts.group(1)), Integer.parseInt(step.group(1)), Integer.parseInt(step.group(2))};
    }

    private static boolean hasChromium() {
        try {
            return new ProcessBuilder("chromium", "--version").redirectErrorStream(true).start().waitFor() == 0;
        } catch (Exception e) {
            return false;
        }
    }

    @Test
    @Timeout(600)
    void progressOverRpcMetricsInSparkAndALiveUiPage() throws Exception {
        SharedSpark.stop();
        SparkSession spark = SparkSession.builder().master("local[2]").appName("sparkatron-plugin-test")
                .config("spark.plugins", SparkatronPlugin.class.getName())
                .config("spark.ui.enabled", "true").config("spark.ui.port", "0")
                .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.sql.shuffle.partitions", "2")
                .config("spark.metrics.conf.*.sink.jmx.class", "org.apache.spark.metrics.sink.JmxSink")
                .getOrCreate();
        try {
            SparkatronDriverPlugin plugin = SparkatronDriverPlugin.forContext(spark.sparkContext());
            assertNotNull(plugin, "spark.plugins installed the driver plugin");
            String page = spark.sparkContext().uiWebUrl().get() + "/sparkatron/";
            boolean browser = hasChromium();
            if (browser) {
                assertTrue(dumpDom(page).contains("No Sparkatron training has run"), "the tab is there before any job");
            }
            int steps = 60;
            TrainConfig cfg = SharedSpark.config(2, 8, steps).with("output", tmp.resolve("out").toString()).with("log_interval", "10")
                    .with("data_split", "\"90,10,0\"").with("eval_interval", "20").with("eval_iters", "1");
            ByteArrayOutputStream console = new ByteArrayOutputStream();
            CompletableFuture<DistributedTraining.Result> job = CompletableFuture.supplyAsync(() -> DistributedTraining.run(
                    SyntheticData.frame(spark, SyntheticData.walks(200, 9), "tokens", 2), cfg, new PrintStream(console, true, StandardCharsets.UTF_8)));
            long deadline = System.currentTimeMillis() + 300_000;
            while (plugin.current() == null || plugin.current().step() < 10) {
                if (job.isDone()) {
                    job.join(); // rethrows the job's failure
                }
                assertTrue(job.isDone() || System.currentTimeMillis() < deadline, "no progress over RPC in 300 s: " + console);
                Thread.sleep(100);
            }
            if (browser) { // while the job runs: the curve holds exactly the steps reported so far
                int[] live = curve(dumpDom(page));
                assertTrue(live[0] >= 10 && live[0] == live[1] && live[2] == steps, "live page: points " + live[0] + ", step " + live[1]);
                System.out.println("live page during the job: " + live[0] + " of " + steps + " steps plotted" + (job.isDone() ? " (job done)" : ""));
            }
            DistributedTraining.Result r = job.get(240, TimeUnit.SECONDS);
            String text = console.toString(StandardCharsets.UTF_8);
            assertTrue(text.contains("progress over Spark RPC (Sparkatron plugin)"), text);
            assertEquals(steps / 10, text.lines().filter(l -> l.matches("\\[sparkatron\\] step +\\d+/60 \\| loss .*")).count(), text);
            assertEquals(steps, r.history().stream().filter(l -> !l.contains("\"kind\"")).count(), "every step reached metrics.jsonl");
            assertEquals(r.evaluations().size(), r.history().stream().filter(l -> l.contains("\"kind\": \"eval\"")).count());
            if (browser) {
                int[] done = curve(dumpDom(page));
                assertEquals(steps, done[0], "the finished job's curve has every step");
            }
            // Spark's metrics system, through its JMX sink
            MBeanServer jmx = ManagementFactory.getPlatformMBeanServer();
            double loss = Double.NaN;
            long step = -1;
            for (ObjectName n : jmx.queryNames(new ObjectName("metrics:*"), null)) {
                String name = n.getKeyProperty("name");
                if (name != null && name.contains("plugin." + SparkatronPlugin.class.getName() + ".")) {
                    if (name.endsWith(".loss")) {
                        loss = ((Number) jmx.getAttribute(n, "Value")).doubleValue();
                    } else if (name.endsWith(".step")) {
                        step = ((Number) jmx.getAttribute(n, "Value")).longValue();
                    }
                }
            }
            assertEquals(steps, step, "gauge step");
            double lastInterval = 0;
            for (String l : r.metrics().subList(steps - 10, steps)) {
                lastInterval += DistributedTraining.Result.loss(l) / 10;
            }
            assertEquals(lastInterval, loss, 1e-5, "gauge loss = the last interval's mean");
            assumeTrue(browser, "chromium is not installed (apt-get install chromium): the page was not loaded in a browser");
        } finally {
            spark.stop();
        }
    }
}
