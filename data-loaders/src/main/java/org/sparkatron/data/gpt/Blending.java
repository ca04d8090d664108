package org.sparkatron.data.gpt;

/**
 * Megatron's blending arithmetic (helpers.cpp {@code build_blending_indices} and
 * {@code build_exhaustive_blending_indices}, blended_megatron_dataset_builder.py
 * {@code _get_size_per_split_per_dataset}, utils.py {@code normalize}), with the same floating-point
 * operations in the same order, so the per-dataset counts equal Megatron's exactly. Stateless.
 */
public final class Blending {
    /** Megatron's default {@code mid_level_dataset_surplus}. */
    public static final double DEFAULT_SURPLUS = 0.005;

    private Blending() {
    }

    /** Which dataset each blended sample comes from, and which of that dataset's samples it is. */
    public record Indices(short[] datasetIndex, long[] datasetSampleIndex, long[] countsPerDataset) {
    }

    /** {@code weights / numpy.sum(weights)}; numpy's pairwise summation is reproduced. */
    public static double[] normalize(double[] weights) {
        for (double w : weights) {
            if (!(w >= 0) || Double.isInfinite(w)) {
                throw new IllegalArgumentException("weights must be finite and non-negative, got " + w);
            }
        }
        double sum = numpySum(weights, 0, weights.length);
        if (sum <= 0) {
            throw new IllegalArgumentException("weights sum to " + sum + "; at least one must be positive");
        }
        double[] out = new double[weights.length];
        for (int i = 0; i < weights.length; i++) {
            out[i] = weights[i] / sum;
        }
        return out;
    }

    /** numpy's {@code pairwise_sum} for float64 (blocks of 128, eight accumulators). */
    static double numpySum(double[] a, int from, int n) {
        if (n < 8) {
            double res = 0.0;
            for (int i = 0; i < n; i++) {
                res += a[from + i];
            }
            return res;
        } else if (n <= 128) {
            double[] r = new double[8];
            for (int j = 0; j < 8; j++) {
                r[j] = a[from + j];
            }
            int i;
            for (i = 8; i < n - (n % 8); i += 8) {
                for (int j = 0; j < 8; j++) {
                    r[j] += a[from + i + j];
                }
            }
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) {
                res += a[from + i];
            }
            return res;
        } else {
            int n2 = n / 2;
            n2 -= n2 % 8;
            return numpySum(a, from, n2) + numpySum(a, from + n2, n - n2);
        }
    }

    /**
     * Samples to build per dataset for a blended split of {@code targetSize}:
     * {@code ceil(ceil(targetSize * weight) * (1 + surplus))}. With surplus 0 this is the count the
     * blend plans to use; Megatron builds each dataset with the surplus and sizes the blend with the sum
     * of the counts without it.
     */
    public static long[] sizesPerDataset(double[] normalizedWeights, long targetSize, double surplus) {
        long[] out = new long[normalizedWeights.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = (long) Math.ceil(Math.ceil(targetSize * normalizedWeights[i]) * (1 + surplus));
        }
        return out;
    }

    /** {@code build_blending_indices}: greedy, each sample goes to the dataset furthest below its share. */
    public static Indices build(double[] normalizedWeights, long size) {
        int n = normalizedWeights.length;
        if (n < 1 || n > Short.MAX_VALUE) {
            throw new IllegalArgumentException("between 1 and 32767 datasets can be blended, got " + n);
        }
        if (size < 0 || size > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("blended size " + size + " out of range");
        }
        short[] dsIndex = new short[(int) size];
        long[] dsSample = new long[(int) size];
        long[] current = new long[n];
        for (int s = 0; s < size; s++) {
            double sd = Math.max((double) s, 1.0);
            int maxIdx = 0;
            double maxErr = normalizedWeights[0] * sd - (double) current[0];
            for (int d = 1; d < n; d++) {
                double err = normalizedWeights[d] * sd - (double) current[d];
                if (err > maxErr) {
                    maxErr = err;
                    maxIdx = d;
                }
            }
            dsIndex[s] = (short) maxIdx;
            dsSample[s] = current[maxIdx];
            current[maxIdx]++;
        }
        return new Indices(dsIndex, dsSample, current);
    }

    /**
     * {@code build_exhaustive_blending_indices}: every sample of every dataset exactly once, interleaved in
     * proportion to the sizes (used when no weights are given).
     */
    public static Indices buildExhaustive(long[] sizes) {
        int n = sizes.length;
        long total = 0;
        for (long s : sizes) {
            total += s;
        }
        if (total > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("blended size " + total + " out of range");
        }
        double[] w = new double[n];
        for (int i = 0; i < n; i++) {
            w[i] = sizes[i] / (double) total;
        }
        short[] dsIndex = new short[(int) total];
        long[] dsSample = new long[(int) total];
        long[] counts = new long[n];
        boolean[] spent = new boolean[n];
        int unspent = 0;
        for (int i = 0; i < n; i++) {
            spent[i] = sizes[i] == 0;
            unspent += spent[i] ? 0 : 1;
        }
        int s = 0;
        while (unspent > 0) {
            double sd = Math.max((double) s, 1.0);
            int arg = -1;
            double max = -Double.MAX_VALUE;
            for (int d = 0; d < n; d++) { // ascending, as iteration over std::set<int32_t> is
                if (spent[d]) {
                    continue;
                }
                double err = w[d] * sd - (double) counts[d];
                if (err > max) {
                    arg = d;
                    max = err;
                }
            }
            dsIndex[s] = (short) arg;
            dsSample[s] = counts[arg];
            counts[arg]++;
            if (sizes[arg] - (double) counts[arg] == 0) {
                spent[arg] = true;
                unspent--;
            }
            s++;
        }
        return new Indices(dsIndex, dsSample, counts);
    }
}
