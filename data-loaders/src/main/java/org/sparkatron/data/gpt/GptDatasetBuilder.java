package org.sparkatron.data.gpt;

import java.util.List;
import org.sparkatron.data.indexed.IndexedDataset;

/**
 * Builds the train / validation / test datasets as Megatron's {@code BlendedMegatronDatasetBuilder}
 * does for a {@code blend} and a {@code split} (one distribution, split by ratio):
 * <ul>
 *   <li>one dataset without weights: a {@link GptDataset} per split with the requested sizes;</li>
 *   <li>with weights: the weights normalized once; each dataset's split built with
 *       {@code ceil(ceil(size * w) * (1 + surplus))} samples, and blended to {@code sum(ceil(size * w))}
 *       samples by a {@link BlendedDataset} given the once-normalized weights (which it normalizes
 *       again, as Megatron's does);</li>
 *   <li>several datasets without weights: each split built for one epoch and blended with the
 *       datasets' lengths as weights, to {@code min(size, total)} samples, or exhaustively when the size
 *       is null.</li>
 * </ul>
 * Refused as Megatron refuses them (it asserts every blend weight is positive): a zero weight, and a
 * blend member that has no sample in a split. Megatron would loop forever building a weighted member
 * whose split holds no token; that is refused too.
 * Stateless; the returned datasets are immutable.
 */
public final class GptDatasetBuilder {
    private GptDatasetBuilder() {
    }

    /**
     * @param datasets       the indexed datasets (Megatron's blend prefixes)
     * @param weights        raw weights (normalized here), or null
     * @param split          e.g. {@code "969,30,1"}
     * @param sizes          samples wanted per split {train, valid, test}; an entry may be null (one epoch)
     * @param dropLastValid  Megatron's {@code drop_last_partial_validation_sequence}
     * @return one dataset per split, null where the split is empty
     */
    public static SampleDataset[] build(List<IndexedDataset> datasets, double[] weights, String split, Long[] sizes,
                                        GptConfig cfg, double surplus, boolean dropLastValid) {
        if (datasets.isEmpty()) {
            throw new IllegalArgumentException("no datasets given");
        }
        if (sizes.length != 3) {
            throw new IllegalArgumentException("sizes must have 3 entries (train, valid, test), got " + sizes.length);
        }
        double[][] matrix = Splits.matrix(Splits.parse(split));
        SampleDataset[] out = new SampleDataset[3];
        if (datasets.size() == 1 && weights == null) {
            for (int s = 0; s < 3; s++) {
                out[s] = splitDataset(datasets.get(0), matrix, s, sizes[s], cfg, dropLastValid);
            }
            return out;
        }
        double[] w = weights == null ? null : Blending.normalize(weights);
        if (w != null && w.length != datasets.size()) {
            throw new IllegalArgumentException(datasets.size() + " datasets but " + w.length + " weights");
        }
        for (int s = 0; s < 3; s++) {
            if (matrix[s] == null) {
                continue;
            }
            SampleDataset[] mids = new SampleDataset[datasets.size()];
            long[] target = null;
            if (w != null) {
                if (sizes[s] == null) {
                    throw new IllegalArgumentException("blending by weights needs a size for split " + s);
                }
                target = Blending.sizesPerDataset(w, sizes[s], 0.0);
                long[] buffer = Blending.sizesPerDataset(w, sizes[s], surplus);
                for (int d = 0; d < mids.length; d++) {
                    mids[d] = member(datasets.get(d), d, matrix, s, buffer[d], cfg, dropLastValid);
                }
                long size = 0;
                for (long t : target) {
                    size += t;
                }
                out[s] = new BlendedDataset(mids, w, size);
            } else {
                double[] lengths = new double[mids.length];
                long total = 0;
                for (int d = 0; d < mids.length; d++) {
                    mids[d] = member(datasets.get(d), d, matrix, s, null, cfg, dropLastValid);
                    lengths[d] = mids[d].length();
                    total += mids[d].length();
                }
                out[s] = new BlendedDataset(mids, lengths, sizes[s] == null ? null : Math.min(sizes[s], total));
            }
        }
        return out;
    }

    private static final String[] SPLIT_NAMES = {"train", "valid", "test"};

    /** One blend member's split; Megatron's BlendedDataset asserts each member has samples. */
    private static GptDataset member(IndexedDataset data, int d, double[][] matrix, int split, Long size, GptConfig cfg,
                                     boolean dropLastValid) {
        int[] docs = Splits.documents(matrix, split, data.sequenceCount());
        long tokens = 0;
        for (int doc : docs) {
            tokens += data.sequenceLength(doc);
        }
        GptDataset g = tokens > cfg.addExtraToken() ? splitDataset(data, matrix, split, size, cfg, dropLastValid) : null;
        if (g == null || g.length() == 0) {
            throw new IllegalArgumentException("blend member " + d + " (" + data.prefix() + ") has no sample in the "
                    + SPLIT_NAMES[split] + " split (" + docs.length + " sequences, " + tokens + " tokens; a sample needs "
                    + cfg.sampleLength() + "); Megatron refuses such a blend (every weight must be positive): "
                    + "change the split or leave the dataset out of the blend");
        }
        return g;
    }

    private static GptDataset splitDataset(IndexedDataset data, double[][] matrix, int split, Long size, GptConfig cfg,
                                           boolean dropLastValid) {
        int[] docs = Splits.documents(matrix, split, data.sequenceCount());
        if (docs == null) {
            return null;
        }
        boolean dropLast = split != Splits.VALID || dropLastValid;
        return new GptDataset(data, docs, size, cfg, dropLast);
    }
}
