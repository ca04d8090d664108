package org.sparkatron.device.cpu;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import org.sparkatron.tensor.Tensor;

/**
 * One row at a time of the CPU cross-entropy kernels (see {@link org.sparkatron.device.Kernels#crossEntropySums} for
 * the layouts): {@link CpuKernels} runs rows on its threads, one call after another or fused row by row. Rows are
 * independent; an instance is shared by the threads of one kernel call, each on its own rows.
 */
final class CpuCrossEntropyRows {
    private final FloatBuffer z;
    private final ByteBuffer zb;
    private final FloatBuffer m;
    private final FloatBuffer s;
    private final FloatBuffer ls;
    private final IntBuffer tg;
    private final int vocabStart;
    private final int vocab;
    private final int valid;
    private final int ld;
    private final boolean simd;

    CpuCrossEntropyRows(boolean simd, Tensor logits, Tensor max, Tensor sums, Tensor losses, Tensor targets,
                        int vocabStart, int vocab, int valid, int ld) {
        this.z = logits.floats();
        this.zb = simd ? logits.hostBuffer() : null;
        this.m = max.floats();
        this.s = sums == null ? null : sums.floats();
        this.ls = losses == null ? null : losses.floats();
        this.tg = targets == null ? null : targets.ints();
        this.vocabStart = vocabStart;
        this.vocab = vocab;
        this.valid = valid;
        this.ld = ld;
        this.simd = simd;
    }

    void max(int r) {
        int base = r * ld;
        float mx = Float.NEGATIVE_INFINITY;
        if (simd && valid > 0) {
            mx = SimdKernels.max(zb, base, valid);
        } else {
            for (int j = 0; j < valid; j++) {
                mx = Math.max(mx, z.get(base + j));
            }
        }
        m.put(r, mx);
    }

    void sums(int r, boolean storeExp) {
        int target = tg.get(r);
        if (target < 0 || target >= vocab) {
            throw new IllegalArgumentException("target id " + target + " at row " + r + " is outside the vocabulary of " + vocab);
        }
        int base = r * ld;
        int local = target - vocabStart;
        float zTarget = local >= 0 && local < valid ? z.get(base + local) : 0f; // read before exp overwrites it
        float shift = m.get(r);
        double sum = 0;
        if (valid > 0 && simd) {
            sum = SimdKernels.expShiftSum(zb, base, valid, shift, storeExp);
        } else {
            for (int j = 0; j < valid; j++) {
                float e = (float) Math.exp(z.get(base + j) - shift);
                if (storeExp) {
                    z.put(base + j, e);
                }
                sum += e;
            }
        }
        s.put(2 * r, (float) sum);
        s.put(2 * r + 1, zTarget);
    }

    void finish(int r, boolean backward, float gradScale) {
        double sum = s.get(2 * r);
        ls.put(r, (float) (m.get(r) + Math.log(sum) - s.get(2 * r + 1)));
        if (!backward) {
            return;
        }
        int base = r * ld;
        float scale = (float) (gradScale / sum); // the logits hold exp(z - max): scaled, they are gradScale * softmax
        if (simd && valid > 0) {
            SimdKernels.scale(zb, base, valid, scale);
        } else {
            for (int j = 0; j < valid; j++) {
                z.put(base + j, z.get(base + j) * scale);
            }
        }
        int local = tg.get(r) - vocabStart;
        if (local >= 0 && local < valid) {
            z.put(base + local, z.get(base + local) - gradScale);
        }
        for (int j = valid; j < ld; j++) {
            z.put(base + j, 0f); // padding: no gradient
        }
    }
}
