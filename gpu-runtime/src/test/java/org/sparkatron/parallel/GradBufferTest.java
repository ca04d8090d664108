package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.optim.AdamW;

/**
 * {@link GradBuffer} against Megatron Core 0.16.1's own layout code: {@code make_grad_buffers.py} ran the
 * index-map part of {@code _ParamAndGradBuffer.__init__} (taken from the installed package's source) on 250
 * cases (two parameter lists, shared embeddings first, last and in the middle, DP 1/2/3/4/8, with and without
 * the distributed optimizer, bucket sizes None/1/500/2000/6000) and every parameter's start, every bucket's
 * bounds and the buffer size must agree exactly. Then what Megatron does not pin down in one buffer: buffers
 * per model chunk, no bucketing after the first chunk, equal shards and every element owned once.
 */
class GradBufferTest {
    @Test
    void layoutsEqualMegatronCoresOwn() throws Exception {
        JsonNode root;
        try (InputStream in = GradBufferTest.class.getResourceAsStream("/megatron/grad_buffers.json")) {
            root = new ObjectMapper().readTree(in);
        }
        assertEquals("0.16.1", root.get("megatron_core").asText());
        int n = 0;
        for (JsonNode c : root.get("cases")) {
            int dp = c.get("dp").asInt();
            boolean distopt = c.get("distributed_optimizer").asBoolean();
            JsonNode bs = c.get("bucket_size");
            DataParallel.Config cfg = bs.isNull() ? new DataParallel.Config(distopt, 0, false)
                    : new DataParallel.Config(distopt, bs.asLong(), true);
            ParameterSet.Builder b = ParameterSet.builder();
            List<GradBuffer.ParamInfo> info = new ArrayList<>();
            List<Integer> shared = new ArrayList<>();
            c.get("shared").forEach(x -> shared.add(x.asInt()));
            for (int i = 0; i < c.get("sizes").size(); i++) {
                b.add("p" + i, c.get("sizes").get(i).asInt());
                info.add(new GradBuffer.ParamInfo(0, 0, shared.contains(i)));
            }
            GradBuffer plan = GradBuffer.plan(b.params(), info, new int[] {dp}, cfg, true);
            String at = c.toString();
            long[] starts = new long[c.get("param_start").size()];
            for (int i = 0; i < starts.length; i++) {
                starts[i] = c.get("param_start").get(i).asLong();
            }
            assertArrayEquals(starts, plan.offsets(), at);
            assertEquals(c.get("numel").asLong(), plan.numel(), at);
            assertEquals(c.get("buckets").size(), plan.buckets().size(), at);
            for (int k = 0; k < plan.buckets().size(); k++) {
                GradBuffer.Bucket bk = plan.buckets().get(k);
                assertEquals(c.get("buckets").get(k).get(0).asLong(), bk.start(), at);
                assertEquals(c.get("buckets").get(k).get(1).asLong(), bk.end(), at);
                for (int p : bk.params()) {
                    assertEquals(k, c.get("param_bucket").get(p).asInt(), at);
                }
                if (distopt) {
                    assertEquals(0, bk.numel() % dp, "equal shards " + at);
                }
            }
            n++;
        }
        assertEquals(250, n);
    }

    @Test
    void oneBufferPerChunkBucketedOnlyInTheFirstAndOnlyOnTheFirstStage() {
        ParameterSet.Builder b = ParameterSet.builder();
        List<GradBuffer.ParamInfo> info = new ArrayList<>();
        int[] chunk = {0, 0, 0, 1, 1, 1};
        for (int i = 0; i < chunk.length; i++) {
            b.add("p" + i, 100);
            info.add(new GradBuffer.ParamInfo(chunk[i], 0, false));
        }
        DataParallel.Config cfg = new DataParallel.Config(false, 150, true);
        GradBuffer first = GradBuffer.plan(b.params(), info, new int[] {2}, cfg, true);
        // chunk 0 reversed: p2 [0,100) p1 [100,200) -> bucket; p0 [200,300) -> bucket; chunk 1 one bucket of three
        assertArrayEquals(new long[] {200, 100, 0, 500, 400, 300}, first.offsets());
        assertEquals(3, first.buckets().size());
        assertArrayEquals(new int[] {2, 1}, first.buckets().get(0).params());
        assertArrayEquals(new int[] {0}, first.buckets().get(1).params());
        assertArrayEquals(new int[] {5, 4, 3}, first.buckets().get(2).params());
        GradBuffer later = GradBuffer.plan(b.params(), info, new int[] {2}, cfg, false); // a later pipeline stage
        assertEquals(2, later.buckets().size());
    }

    @Test
    void everyParameterElementIsOwnedByExactlyOneRankOfTheGroup() {
        ParameterSet.Builder b = ParameterSet.builder();
        List<GradBuffer.ParamInfo> info = new ArrayList<>();
        int[] sizes = {7, 1, 130, 65, 64, 3, 1000, 129, 77};
        for (int i = 0; i < sizes.length; i++) {
            b.add("p" + i, sizes[i]);
            info.add(new GradBuffer.ParamInfo(0, 0, i == 0));
        }
        for (int dp : new int[] {1, 2, 3, 5, 8}) {
            GradBuffer plan = GradBuffer.plan(b.params(), info, new int[] {dp},
                    new DataParallel.Config(true, 300, true), true);
            ParameterSet.Builder laid = b.relayout(plan.offsets(), plan.numel());
            int[] owners = new int[(int) plan.numel()];
            long state = -1;
            for (int r = 0; r < dp; r++) {
                List<long[]> ranges = plan.ownedRanges(new int[] {r});
                long total = 0;
                for (long[] range : ranges) {
                    total += range[1];
                    for (long e = range[0]; e < range[0] + range[1]; e++) {
                        owners[(int) e]++;
                    }
                }
                assertEquals(plan.ownedNumel(), total);
                if (state >= 0) {
                    assertEquals(state, total, "every rank keeps the same amount of state");
                }
                state = total;
                // pieces cover exactly the parameter elements in the ranges
                long covered = 0;
                for (AdamW.Piece pc : AdamW.piecesOf(laid.params(), ranges)) {
                    covered += pc.length();
                }
                long expected = 0;
                for (long[] range : ranges) {
                    for (ParameterSet.Param p : laid.params()) {
                        expected += Math.max(0, Math.min(range[0] + range[1], p.offset() + p.numel()) - Math.max(range[0], p.offset()));
                    }
                }
                assertEquals(expected, covered);
            }
            for (int o : owners) {
                assertEquals(1, o, "dp " + dp);
            }
            for (ParameterSet.Param p : laid.params()) {
                assertEquals(0, p.offset() % 64, "parameter starts are 64-element aligned");
            }
            assertTrue(plan.buckets().size() > 2, "the bucket size splits the buffer");
        }
    }
}
