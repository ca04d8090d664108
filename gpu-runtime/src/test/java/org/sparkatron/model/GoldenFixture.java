package org.sparkatron.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.sparkatron.checkpoint.SafeTensors;
import org.sparkatron.checkpoint.SafeTensorsFile;

/**
 * One golden fixture folder produced by {@code src/test/python/make_golden.py} (see docs/golden.md), loaded
 * from the test classpath at {@code /golden/<family>/}: the HF config, the initial weights, the token batch,
 * PyTorch's float64 logits, loss and gradients (stored as F32), and the 5-step AdamW trajectory.
 *
 * <p>Parameter names are the Hugging Face names without the GPT-2 {@code transformer.} prefix (as in the
 * gradients and in final.safetensors); {@link #storedName(String)} gives the name in model.safetensors.
 * Not thread-safe; close it to release the mapped files.
 */
public final class GoldenFixture implements AutoCloseable {
    /** The optimizer settings and trajectory of adamw.json. */
    public record AdamW(double lr, double beta1, double beta2, double eps, double weightDecay, double gradClip,
            int steps, double[] losses, double[] gradNorms, boolean[] clipped, double finalLoss,
            List<String> noDecayParams) {
    }

    private static final ObjectMapper JSON = new ObjectMapper();

    private final String family;
    private final Path dir;
    private final JsonNode config;
    private final SafeTensorsFile weights;
    private final SafeTensorsFile expected;
    private final SafeTensorsFile finalWeights;
    private final int[][] tokens;
    private final AdamW adamw;
    private final String prefix;

    private GoldenFixture(String family, Path dir, JsonNode config, SafeTensorsFile weights, SafeTensorsFile expected,
            SafeTensorsFile finalWeights, int[][] tokens, AdamW adamw) {
        this.family = family;
        this.dir = dir;
        this.config = config;
        this.weights = weights;
        this.expected = expected;
        this.finalWeights = finalWeights;
        this.tokens = tokens;
        this.adamw = adamw;
        this.prefix = family.equals("gpt2") ? "transformer." : "";
    }

    /** Loads {@code /golden/<family>/} ("gpt2" or "llama") from the test classpath. */
    public static GoldenFixture load(String family) throws IOException {
        URL url = GoldenFixture.class.getResource("/golden/" + family + "/config.json");
        if (url == null) {
            throw new IllegalArgumentException("no golden fixture '" + family + "' on the test classpath "
                    + "(expected /golden/" + family + "/config.json)");
        }
        Path dir;
        try {
            dir = Path.of(url.toURI()).getParent();
        } catch (URISyntaxException e) {
            throw new IOException("bad fixture location " + url, e);
        }
        JsonNode config = JSON.readTree(dir.resolve("config.json").toFile());
        int[][] tokens = readTokens(dir.resolve("tokens.txt"));
        AdamW adamw = readAdamW(JSON.readTree(dir.resolve("adamw.json").toFile()));
        SafeTensorsFile w = SafeTensors.open(dir.resolve("model.safetensors"));
        SafeTensorsFile e = null;
        try {
            e = SafeTensors.open(dir.resolve("expected.safetensors"));
            SafeTensorsFile f = SafeTensors.open(dir.resolve("final.safetensors"));
            return new GoldenFixture(family, dir, config, w, e, f, tokens, adamw);
        } catch (IOException | RuntimeException ex) {
            w.close();
            if (e != null) {
                e.close();
            }
            throw ex;
        }
    }

    static int[][] readTokens(Path file) throws IOException {
        List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
        List<int[]> rows = new ArrayList<>();
        for (int i = 0; i < lines.size(); i++) {
            String line = lines.get(i);
            if (line.isEmpty()) {
                continue;
            }
            String[] parts = line.split(" ", -1);
            int[] row = new int[parts.length];
            for (int j = 0; j < parts.length; j++) {
                try {
                    row[j] = Integer.parseInt(parts[j]);
                } catch (NumberFormatException ex) {
                    throw new IOException(file + " line " + (i + 1) + ": token " + (j + 1) + " '" + parts[j]
                            + "' is not an integer");
                }
            }
            if (!rows.isEmpty() && row.length != rows.get(0).length) {
                throw new IOException(file + " line " + (i + 1) + ": " + row.length + " tokens, expected "
                        + rows.get(0).length + " like line 1");
            }
            rows.add(row);
        }
        return rows.toArray(new int[0][]);
    }

    private static AdamW readAdamW(JsonNode j) {
        List<String> noDecay = new ArrayList<>();
        j.get("no_decay_params").forEach(n -> noDecay.add(n.asText()));
        boolean[] clipped = new boolean[j.get("clipped").size()];
        for (int i = 0; i < clipped.length; i++) {
            clipped[i] = j.get("clipped").get(i).asBoolean();
        }
        return new AdamW(j.get("lr").asDouble(), j.get("beta1").asDouble(), j.get("beta2").asDouble(),
                j.get("eps").asDouble(), j.get("weight_decay").asDouble(), j.get("grad_clip").asDouble(),
                j.get("steps").asInt(), doubles(j.get("losses")), doubles(j.get("grad_norms")), clipped,
                j.get("final_loss").asDouble(), Collections.unmodifiableList(noDecay));
    }

    private static double[] doubles(JsonNode a) {
        double[] d = new double[a.size()];
        for (int i = 0; i < d.length; i++) {
            d[i] = a.get(i).asDouble();
        }
        return d;
    }

    public String family() {
        return family;
    }

    public Path dir() {
        return dir;
    }

    public JsonNode config() {
        return config;
    }

    /** model.safetensors: the initial F32 weights under HF names (gpt2: with prefix and mask buffers). */
    public SafeTensorsFile weights() {
        return weights;
    }

    /** expected.safetensors: "logits", "loss" and "grad.&lt;param&gt;". */
    public SafeTensorsFile expectedFile() {
        return expected;
    }

    /** final.safetensors: weights after the AdamW steps, under parameter names (no gpt2 prefix). */
    public SafeTensorsFile finalWeights() {
        return finalWeights;
    }

    /** The name a parameter has in model.safetensors ("transformer." + name for gpt2). */
    public String storedName(String param) {
        return prefix + param;
    }

    /** The full token rows, each T+1 long (a copy). */
    public int[][] tokens() {
        int[][] c = new int[tokens.length][];
        for (int i = 0; i < c.length; i++) {
            c[i] = tokens[i].clone();
        }
        return c;
    }

    public int batch() {
        return tokens.length;
    }

    public int seqLen() {
        return tokens[0].length - 1;
    }

    /** Row-major [B*T] inputs: the first T tokens of each row. */
    public int[] inputs() {
        return flatten(0);
    }

    /** Row-major [B*T] targets: the last T tokens of each row. */
    public int[] targets() {
        return flatten(1);
    }

    private int[] flatten(int shift) {
        int t = seqLen();
        int[] out = new int[batch() * t];
        for (int b = 0; b < batch(); b++) {
            System.arraycopy(tokens[b], shift, out, b * t, t);
        }
        return out;
    }

    /** Parameter names, in the order expected.safetensors lists their gradients. */
    public Set<String> paramNames() {
        Set<String> s = new LinkedHashSet<>();
        for (String n : expected.names()) {
            if (n.startsWith("grad.")) {
                s.add(n.substring("grad.".length()));
            }
        }
        return s;
    }

    /** An expected tensor ("logits", "loss", "grad.&lt;param&gt;") as floats. */
    public float[] expected(String name) {
        return expected.readF32(name);
    }

    public int[] expectedShape(String name) {
        return expected.shape(name);
    }

    /** Logits [B, T, V], row-major. */
    public float[] logits() {
        return expected("logits");
    }

    /** Mean cross-entropy over the B*T targets, in nats (F32-rounded; adamw().losses()[0] has it in double). */
    public float loss() {
        return expected("loss")[0];
    }

    /** The gradient of a parameter (name without the gpt2 prefix), in the parameter's HF layout. */
    public float[] grad(String param) {
        return expected("grad." + param);
    }

    public AdamW adamw() {
        return adamw;
    }

    @Override
    public void close() throws IOException {
        try {
            weights.close();
            expected.close();
        } finally {
            finalWeights.close();
        }
    }
}
