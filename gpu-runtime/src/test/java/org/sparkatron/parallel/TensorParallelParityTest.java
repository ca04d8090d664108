package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;

/**
 * Tensor parallelism (with and without sequence parallelism, alone and with data parallelism) trains
 * exactly like one rank: for five AdamW steps with gradient clipping active, every world rank's loss and
 * gradient norm, its gathered gradients of every parameter, and its gathered weights after each update
 * equal the single-rank run on the same global batch.
 *
 * <p>Tolerances. The runs differ only in fp32 summation order: the output projections' partial sums
 * are added by the all-reduce instead of inside one GEMM, the vocab-parallel softmax sums per shard, the
 * gradient norm sums per rank. Each such reordering moves a value by a few ulps (~1e-7 relative).
 * Losses (~4 nats) and norms therefore agree to 1e-5; gradients (magnitude up to ~0.05 after clipping)
 * to 2e-6 absolute + 1e-3 relative. Weights after five steps at lr 1e-2: AdamW moves each element by up
 * to lr * m / sqrt(v), which amplifies relative gradient differences only where a gradient is pure
 * rounding noise (e.g. GPT-2's key bias, exactly zero in exact arithmetic); 1e-4 absolute covers them,
 * as in the golden test against PyTorch.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class TensorParallelParityTest {

    @ParameterizedTest(name = "{0} tp={1} dp={2} sp={3} dropout={4}")
    @CsvSource({
        "gpt2, 2, 1, false, 0",
        "gpt2, 4, 1, false, 0",
        "gpt2, 2, 1, true, 0.1",
        "gpt2, 4, 1, true, 0",
        "gpt2, 2, 2, false, 0",
        "gpt2, 2, 2, true, 0.1",
        "llama, 2, 1, false, 0.1",
        "llama, 4, 1, false, 0",
        "llama, 2, 1, true, 0",
        "llama, 4, 1, true, 0.1",
        "llama, 2, 2, false, 0",
        "llama, 2, 2, true, 0",
    })
    void trainsLikeOneRank(String family, int tp, int dp, boolean sp, float dropout) throws Exception {
        ModelConfig cfg = ParityRun.config(family);
        int batch = 2;
        List<ParityRun.Step> ref = ParityRun.reference(cfg, batch * dp, dropout);
        List<List<ParityRun.Step>> runs = ParityRun.parallel(cfg, tp, dp, sp, batch, dropout);
        List<ParameterSet.Param> params = new Transformer(cfg, org.sparkatron.device.TestDevices.create()).params().params();
        assertTrue(ref.get(0).gradNorm() > 0.05, "clipping is active (reference norm " + ref.get(0).gradNorm() + ")");
        for (int rank = 0; rank < runs.size(); rank++) {
            for (int s = 0; s < ParityRun.STEPS; s++) {
                ParityRun.Step want = ref.get(s);
                ParityRun.Step got = runs.get(rank).get(s);
                String at = family + " tp=" + tp + " dp=" + dp + " sp=" + sp + " rank " + rank + " step " + (s + 1);
                assertEquals(want.loss(), got.loss(), 1e-5, at + ": loss");
                assertEquals(want.gradNorm(), got.gradNorm(), 1e-5 * want.gradNorm(), at + ": gradient norm");
                for (ParameterSet.Param p : params) {
                    assertClose(at + ": gradient of " + p.name(), want.grads(), got.grads(), p, 2e-6, 1e-3);
                    assertClose(at + ": weight " + p.name(), want.weights(), got.weights(), p, 1e-4, 1e-3);
                }
            }
        }
    }

    static void assertClose(String what, float[] want, float[] got, ParameterSet.Param p, double abs, double rel) {
        for (long i = p.offset(); i < p.offset() + p.numel(); i++) {
            double w = want[(int) i];
            double g = got[(int) i];
            if (!(Math.abs(w - g) <= abs + rel * Math.abs(w))) {
                throw new AssertionError(what + " element " + (i - p.offset()) + ": expected " + w + " got " + g);
            }
        }
    }
}
