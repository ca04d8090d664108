package org.sparkatron.parallel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.sparkatron.comm.SelfCommunicator;

/**
 * The sequence split equals Megatron Core's: for every (cp, seq) of the fixture
 * {@code megatron/cp_chunks.json}, which {@code gpu-runtime/src/test/python/make_cp_chunks.py} made by running
 * megatron-core 0.16.1's own {@code get_batch_on_this_cp_rank} on a batch whose tokens, labels, loss mask and
 * position ids are the positions, each CP rank's rows are the same global positions in the same order. Also: the
 * runs of rows dropout keys by, and the refusals of lengths the group cannot split.
 */
class ContextParallelChunksTest {

    @Test
    void eachRankHoldsTheRowsMegatronGivesIt() throws Exception {
        JsonNode root;
        try (InputStream in = getClass().getResourceAsStream("/megatron/cp_chunks.json")) {
            root = new ObjectMapper().readTree(in);
        }
        assertEquals("0.16.1", root.get("megatron_core").asText());
        int checked = 0;
        for (JsonNode c : root.get("cases")) {
            int cp = c.get("cp").asInt();
            int seq = c.get("seq").asInt();
            assertEquals(cp, c.get("positions").size());
            for (int r = 0; r < cp; r++) {
                JsonNode want = c.get("positions").get(r);
                int[] w = new int[want.size()];
                for (int i = 0; i < w.length; i++) {
                    w[i] = want.get(i).asInt();
                }
                assertArrayEquals(w, ContextParallel.positions(seq, cp, r), "cp " + cp + " seq " + seq + " rank " + r);
                checked++;
            }
        }
        assertTrue(checked >= 20, "fixture cases checked: " + checked);
    }

    /** Every rank's rows together are each position once: the split loses and repeats nothing. */
    @Test
    void theRanksTogetherHoldEveryPositionOnce() {
        for (int cp : new int[] {1, 2, 3, 4, 8}) {
            int seq = 2 * cp * 5;
            boolean[] seen = new boolean[seq];
            for (int r = 0; r < cp; r++) {
                for (int p : ContextParallel.positions(seq, cp, r)) {
                    assertTrue(!seen[p], "cp " + cp + ": position " + p + " twice");
                    seen[p] = true;
                }
            }
            for (int p = 0; p < seq; p++) {
                assertTrue(seen[p], "cp " + cp + ": position " + p + " missing");
            }
        }
    }

    /** Local rows map to global rows of [B, T] in runs that end at chunk and block boundaries. */
    @Test
    void runsOfRowsFollowTheChunks() {
        ContextParallel one = new ContextParallel(new SelfCommunicator(), ContextParallel.CommType.P2P);
        List<String> runs = new ArrayList<>();
        one.forEachRun(3, 10, 8, (local, global, count) -> runs.add(local + ":" + global + "+" + count));
        assertEquals(List.of("0:3+5", "5:8+5"), runs, "CP 1: whole sequences");
    }

    @Test
    void lengthsTheGroupCannotSplitAreRefusedNamingTheNumbers() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ContextParallel.validate(12, 4));
        assertEquals("sequence length 12 is not divisible by 2 x context parallel size 4 = 8 (each sequence is cut into "
                + "2 x cp chunks)", e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> ContextParallel.validate(16, 0));
        assertThrows(IllegalArgumentException.class, () -> ContextParallel.positions(16, 2, 2));
        ContextParallel.validate(7, 1); // CP 1 splits nothing
        assertThrows(IllegalArgumentException.class, () -> ContextParallel.CommType.parse("a2a"));
        assertEquals(ContextParallel.CommType.P2P, ContextParallel.CommType.parse("Ring"));
        assertEquals(ContextParallel.CommType.ALL_GATHER, ContextParallel.CommType.parse("all_gather"));
    }
}
