package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDatasetWriter;

/**
 * Training from Megatron indexed datasets ({@code input_format: "megatron"}): ranks read the files
 * themselves in Megatron's sample order; data parallelism splits each global batch as Megatron's
 * sampler does, so DP=2 trains exactly like one rank on the same global batches.
 */
class MegatronInputTest {
    /** Writes the demo's walk documents as one Megatron dataset; returns its prefix. */
    private static String writeDataset(Path dir, String name, List<int[]> docs) throws Exception {
        String prefix = dir.resolve(name).toString();
        try (IndexedDatasetWriter w = new IndexedDatasetWriter(prefix, IndexedDType.UINT16)) {
            for (int[] d : docs) {
                w.addDocument(d);
            }
        }
        return prefix;
    }

    private static TrainConfig config(int dp, String input, int steps) {
        return SharedSpark.config(dp, 8, steps).with("input_format", "megatron").with("input", input);
    }

    @Test
    @Timeout(240)
    void dataParallelRanksReadTheirShareOfEachGlobalBatch(@TempDir Path dir) throws Exception {
        String a = writeDataset(dir, "part-a", SyntheticData.walks(120, 11));
        String b = writeDataset(dir, "part-b", SyntheticData.walks(80, 12));
        String both = a + "," + b; // two files, blended by token count
        int steps = 8;
        DistributedTraining.Result one = DistributedTraining.runMegatron(SharedSpark.get(), config(1, both, steps), null);
        DistributedTraining.Result two = DistributedTraining.runMegatron(SharedSpark.get(), config(2, both, steps), null);
        for (int s = 0; s < steps; s++) {
            // same global batches, the 128 token losses summed in another order: a few ulps (see DataParallelParityTest)
            assertEquals(DistributedTraining.Result.loss(one.metrics().get(s)), DistributedTraining.Result.loss(two.metrics().get(s)),
                    1e-5, "dp=2 loss at step " + (s + 1));
        }
        assertTrue(one.lastLoss() < one.firstLoss() - 0.05, "loss falls: " + one.firstLoss() + " -> " + one.lastLoss());
        for (RankReport r : two.ranks()) {
            assertEquals(steps * 8 / 2, r.samplesRead(), "rank " + r.rank() + " read its half of every global batch");
        }
    }

    @Test
    @Timeout(120)
    void badDatasetsAreRefusedBeforeLaunch(@TempDir Path dir) throws Exception {
        IllegalArgumentException missing = assertThrows(IllegalArgumentException.class,
                () -> DistributedTraining.runMegatron(SharedSpark.get(), config(1, dir.resolve("nothing").toString(), 2), null));
        assertTrue(missing.getMessage().contains("cannot read Megatron dataset") && missing.getMessage().contains("nothing"),
                missing.getMessage());

        // a small dataset is repeated over epochs as Megatron does; a split with no training part is refused
        String small = writeDataset(dir, "small", SyntheticData.walks(3, 1));
        IllegalArgumentException noTrain = assertThrows(IllegalArgumentException.class, () -> DistributedTraining.runMegatron(
                SharedSpark.get(), config(1, small, 2).with("data_split", "0,100,0"), null));
        assertTrue(noTrain.getMessage().contains("leaves no training documents"), noTrain.getMessage());

        Path idx = Path.of(small + ".idx");
        byte[] bytes = Files.readAllBytes(idx);
        Files.write(idx, java.util.Arrays.copyOf(bytes, bytes.length / 2));
        IllegalArgumentException truncated = assertThrows(IllegalArgumentException.class,
                () -> DistributedTraining.runMegatron(SharedSpark.get(), config(1, small, 1), null));
        assertTrue(truncated.getMessage().contains("small.idx"), truncated.getMessage());
    }
}
