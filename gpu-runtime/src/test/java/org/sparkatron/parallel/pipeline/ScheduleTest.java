package org.sparkatron.parallel.pipeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.InputStream;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The schedules' operation orders against Megatron Core's (generated from its own schedule functions by
 * {@code src/test/python/make_pipeline_schedules.py}), their freedom from deadlock under the executor's
 * rules (blocking receives, sends that never wait), shown by simulating every stage for many shapes, and
 * their refusals and memory bounds.
 */
class ScheduleTest {

    @Test
    void computeOrdersEqualMegatronCores() throws Exception {
        JsonNode root;
        try (InputStream in = getClass().getResourceAsStream("/megatron/pipeline_schedules.json")) {
            root = new ObjectMapper().readTree(in);
        }
        assertTrue(root.get("cases").size() >= 10);
        for (JsonNode c : root.get("cases")) {
            int p = c.get("stages").asInt();
            int v = c.get("chunks").asInt();
            int m = c.get("micro_batches").asInt();
            Schedule s = Schedule.of(p, v, m);
            String[] rows = s.describe().split("\n");
            for (int stage = 0; stage < p; stage++) {
                String ours = rows[stage + 1].substring(rows[stage + 1].indexOf(": ") + 2);
                assertEquals(c.get("orders").get(stage).asText(), ours, s.name() + " p=" + p + " v=" + v + " m=" + m
                        + " stage " + stage + " (megatron-core " + root.get("megatron_core").asText() + ")");
            }
        }
    }

    @Test
    void describePrintsATablePerStage() {
        assertEquals("1F1B: 2 stage(s), 3 micro-batch(es)\nstage 0: F0 F1 B0 F2 B1 B2\nstage 1: F0 B0 F1 B1 F2 B2\n",
                new OneFOneB(2, 3).describe());
    }

    /** Every shape runs to the end under blocking receives and non-waiting sends: no deadlock. */
    @Test
    void noScheduleDeadlocks() {
        int checked = 0;
        for (int p = 1; p <= 6; p++) {
            for (int v = 1; v <= 4; v++) {
                for (int m = 1; m <= 13; m++) {
                    if ((p == 1 && v > 1) || (v > 1 && m % p != 0)) {
                        continue;
                    }
                    simulate(Schedule.of(p, v, m));
                    simulate(new ForwardOnly(p, v, m));
                    checked++;
                }
            }
        }
        assertTrue(checked > 80, "shapes checked: " + checked);
    }

    /**
     * Runs every stage's operations in order: a receive waits until its message was sent, a send never
     * waits. Fails if all stages are stuck before finishing, or if a compute step runs before its inputs.
     */
    static void simulate(Schedule s) {
        int p = s.stages();
        int v = s.chunks();
        List<List<PipelineOp>> ops = new ArrayList<>();
        for (int stage = 0; stage < p; stage++) {
            ops.add(s.ops(stage));
        }
        int[] at = new int[p];
        Map<String, ArrayDeque<Boolean>> inbox = new HashMap<>();
        Map<String, Boolean> done = new HashMap<>();
        boolean progress = true;
        while (progress) {
            progress = false;
            for (int stage = 0; stage < p; stage++) {
                while (at[stage] < ops.get(stage).size()) {
                    PipelineOp op = ops.get(stage).get(at[stage]);
                    int k = op.chunk() * p + stage;
                    String key = switch (op.kind()) {
                        case RECV_FORWARD -> "F" + op.microBatch() + "@" + k;
                        case RECV_BACKWARD -> "B" + op.microBatch() + "@" + k;
                        default -> null;
                    };
                    if (key != null) {
                        ArrayDeque<Boolean> q = inbox.get(key);
                        if (q == null || q.isEmpty()) {
                            break; // blocked on this receive
                        }
                        q.poll();
                    }
                    switch (op.kind()) {
                        case SEND_FORWARD -> inbox.computeIfAbsent("F" + op.microBatch() + "@" + (k + 1), x -> new ArrayDeque<>()).add(true);
                        case SEND_BACKWARD -> inbox.computeIfAbsent("B" + op.microBatch() + "@" + (k - 1), x -> new ArrayDeque<>()).add(true);
                        case FORWARD -> {
                            if (k > 0 && !done.containsKey("F" + op.microBatch() + "@" + (k - 1))) {
                                throw new AssertionError(s.describe() + "forward before its input: " + op + " on stage " + stage);
                            }
                            done.put("F" + op.microBatch() + "@" + k, true);
                        }
                        case BACKWARD -> {
                            boolean lastStage = k == p * v - 1;
                            if (!done.containsKey("F" + op.microBatch() + "@" + k)
                                    || (!lastStage && !done.containsKey("B" + op.microBatch() + "@" + (k + 1)))) {
                                throw new AssertionError(s.describe() + "backward before its inputs: " + op + " on stage " + stage);
                            }
                            done.put("B" + op.microBatch() + "@" + k, true);
                        }
                        default -> {
                        }
                    }
                    at[stage]++;
                    progress = true;
                }
            }
        }
        for (int stage = 0; stage < p; stage++) {
            if (at[stage] < ops.get(stage).size()) {
                throw new AssertionError("deadlock: " + s.name() + " p=" + p + " v=" + v + " m=" + s.microBatches() + ", stage "
                        + stage + " stuck at " + ops.get(stage).get(at[stage]) + "\n" + s.describe());
            }
        }
        int computes = 0;
        for (List<PipelineOp> l : ops) {
            computes += (int) l.stream().filter(PipelineOp::isCompute).count();
        }
        boolean training = !(s instanceof ForwardOnly);
        assertEquals((training ? 2 : 1) * p * v * s.microBatches(), computes, "every micro-batch through every chunk");
    }

    @Test
    void oneFOneBHoldsAtMostPMinusSMicroBatches() {
        for (int m : new int[] {1, 2, 3, 8}) {
            OneFOneB s = new OneFOneB(4, m);
            for (int stage = 0; stage < 4; stage++) {
                assertEquals(Math.min(4 - stage, m), s.maxInFlight(stage, 0), "stage " + stage + ", m " + m);
            }
        }
        assertEquals(1, new NoPipelining(5).maxInFlight(0, 0));
    }

    @Test
    void impossibleShapesAreRefused() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Schedule.of(4, 2, 6));
        assertTrue(e.getMessage().contains("micro-batches (6) to be a multiple of the pipeline size (4)"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new OneFOneB(2, 0));
        assertThrows(IllegalArgumentException.class, () -> new NoPipelining(1).ops(1));
    }
}
