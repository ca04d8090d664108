package org.sparkatron.comm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.comm.ParallelLayout.Group;

/** Groups against hand-worked lists (docs/comm.md has the same 16-rank examples), validation messages. */
@Timeout(30)
class ParallelLayoutTest {
    private static void assertGroups(ParallelLayout l, Group kind, int[]... expected) {
        List<int[]> got = l.groups(kind);
        assertEquals(expected.length, got.size(), kind + " group count");
        for (int i = 0; i < expected.length; i++) {
            assertArrayEquals(expected[i], got.get(i), kind + " group " + i);
        }
    }

    /** Megatron Core's own docstring example: 16 GPUs, TP 2, PP 4, so DP 2. */
    @Test
    void megatronDocstringExampleSixteenRanks() {
        ParallelLayout l = ParallelLayout.forWorld(16, 2, 1, 1, 4, 1);
        assertEquals(2, l.dp());
        assertGroups(l, Group.TP, new int[] {0, 1}, new int[] {2, 3}, new int[] {4, 5}, new int[] {6, 7},
                new int[] {8, 9}, new int[] {10, 11}, new int[] {12, 13}, new int[] {14, 15});
        assertGroups(l, Group.DP, new int[] {0, 2}, new int[] {1, 3}, new int[] {4, 6}, new int[] {5, 7},
                new int[] {8, 10}, new int[] {9, 11}, new int[] {12, 14}, new int[] {13, 15});
        assertGroups(l, Group.PP, new int[] {0, 4, 8, 12}, new int[] {1, 5, 9, 13}, new int[] {2, 6, 10, 14},
                new int[] {3, 7, 11, 15});
        assertGroups(l, Group.MODEL, new int[] {0, 1, 4, 5, 8, 9, 12, 13}, new int[] {2, 3, 6, 7, 10, 11, 14, 15});
        assertGroups(l, Group.EMBEDDING, new int[] {0, 12}, new int[] {1, 13}, new int[] {2, 14}, new int[] {3, 15});
        assertGroups(l, Group.POSITION_EMBEDDING, new int[] {0}, new int[] {1}, new int[] {2}, new int[] {3});
        assertArrayEquals(new int[0], l.group(Group.EMBEDDING, 5), "middle stages hold no embedding");
        assertArrayEquals(new int[] {1, 0, 0, 1, 3}, l.coords(15));
    }

    /** 16 ranks with every dimension but dp: TP 2, CP 2, EP 2, DP 1, PP 2 (the docs/comm.md worked example). */
    @Test
    void workedExampleWithContextAndExpertParallelism() {
        ParallelLayout l = ParallelLayout.of(16, 2, 2, 2, 1, 2, 1);
        assertArrayEquals(new int[] {1, 0, 1, 0, 1}, l.coords(13));
        assertEquals(13, l.rankOf(1, 0, 1, 0, 1));
        assertGroups(l, Group.CP, new int[] {0, 2}, new int[] {1, 3}, new int[] {4, 6}, new int[] {5, 7},
                new int[] {8, 10}, new int[] {9, 11}, new int[] {12, 14}, new int[] {13, 15});
        assertGroups(l, Group.EP, new int[] {0, 4}, new int[] {1, 5}, new int[] {2, 6}, new int[] {3, 7},
                new int[] {8, 12}, new int[] {9, 13}, new int[] {10, 14}, new int[] {11, 15});
        assertGroups(l, Group.DP, l.groups(Group.EP).toArray(new int[0][]));
        assertGroups(l, Group.DP_CP, new int[] {0, 2, 4, 6}, new int[] {1, 3, 5, 7}, new int[] {8, 10, 12, 14},
                new int[] {9, 11, 13, 15});
        assertGroups(l, Group.PP, new int[] {0, 8}, new int[] {1, 9}, new int[] {2, 10}, new int[] {3, 11},
                new int[] {4, 12}, new int[] {5, 13}, new int[] {6, 14}, new int[] {7, 15});
        assertGroups(l, Group.EXPERT_DP, l.groups(Group.CP).toArray(new int[0][]));
        assertGroups(l, Group.TP_CP, new int[] {0, 1, 2, 3}, new int[] {4, 5, 6, 7}, new int[] {8, 9, 10, 11},
                new int[] {12, 13, 14, 15});
        assertGroups(l, Group.EMBEDDING, l.groups(Group.PP).toArray(new int[0][]));
        assertArrayEquals(new int[] {4, 6}, l.group(Group.EXPERT_DP, 6));
    }

    /** EP folds into DP: DP spans ep x dp, expert-DP spans dp (x cp), EP the ep digit (Megatron 0.6-0.8). */
    @Test
    void expertParallelFoldsIntoDataParallel() {
        ParallelLayout l = ParallelLayout.of(8, 1, 1, 2, 2, 2, 1);
        assertEquals(4, l.dataParallelSize());
        assertGroups(l, Group.DP, new int[] {0, 1, 2, 3}, new int[] {4, 5, 6, 7});
        assertGroups(l, Group.EP, new int[] {0, 1}, new int[] {2, 3}, new int[] {4, 5}, new int[] {6, 7});
        assertGroups(l, Group.EXPERT_DP, new int[] {0, 2}, new int[] {1, 3}, new int[] {4, 6}, new int[] {5, 7});
        assertGroups(l, Group.PP, new int[] {0, 4}, new int[] {1, 5}, new int[] {2, 6}, new int[] {3, 7});
    }

    @Test
    void dataGroupsAreTheFirstAndLastStageOfEachReplicaReaderFirst() {
        // tp 2 x dp 2 x pp 3: world rank = tp + 2 dp + 4 pp; the stage between reads nothing
        ParallelLayout l = ParallelLayout.of(12, 2, 1, 1, 2, 3, 1);
        assertGroups(l, Group.DATA, new int[] {0, 1, 8, 9}, new int[] {2, 3, 10, 11});
        assertEquals(0, l.group(Group.DATA, 4).length);
        assertEquals(0, l.group(Group.DATA, 7).length);
        // one stage: the data group is the replica's TP group
        ParallelLayout one = ParallelLayout.of(4, 2, 1, 1, 2, 1, 1);
        assertGroups(one, Group.DATA, new int[] {0, 1}, new int[] {2, 3});
    }

    @Test
    void everyKindPartitionsTheWorldForManyShapes() {
        int[][] shapes = {{1, 1, 1, 1, 1}, {2, 3, 1, 2, 2}, {4, 1, 2, 3, 1}, {1, 2, 3, 1, 4}, {3, 1, 1, 5, 2}};
        for (int[] s : shapes) {
            int world = s[0] * s[1] * s[2] * s[3] * s[4];
            ParallelLayout l = ParallelLayout.of(world, s[0], s[1], s[2], s[3], s[4], 1);
            for (int r = 0; r < world; r++) {
                int[] c = l.coords(r);
                assertEquals(r, l.rankOf(c[0], c[1], c[2], c[3], c[4]));
            }
            for (Group kind : Group.values()) {
                int[] seen = new int[world];
                for (int[] g : l.groups(kind)) {
                    for (int i = 0; i < g.length; i++) {
                        seen[g[i]]++;
                        assertTrue(i == 0 || g[i] > g[i - 1], "increasing ranks");
                    }
                }
                for (int r = 0; r < world; r++) {
                    boolean optional = kind == Group.EMBEDDING || kind == Group.POSITION_EMBEDDING || kind == Group.DATA;
                    assertTrue(optional ? seen[r] <= 1 : seen[r] == 1, kind + " covers rank " + r + " once in " + l);
                }
            }
            assertEquals(s[0], l.groups(Group.TP).get(0).length);
            assertEquals(s[2] * s[3], l.groups(Group.DP).get(0).length);
            assertEquals(s[1] * s[3], l.groups(Group.EXPERT_DP).get(0).length);
            assertEquals(s[0] * s[4], l.groups(Group.MODEL).get(0).length);
        }
    }

    @Test
    void validationNamesTheNumbers() {
        assertMessage("world size 16 != tp 2 x cp 1 x ep 1 x dp 2 x pp 2 = 8",
                () -> ParallelLayout.of(16, 2, 1, 1, 2, 2, 1));
        assertMessage("world size 10 is not divisible by tp 4 x cp 1 x ep 1 x pp 1 = 4",
                () -> ParallelLayout.forWorld(10, 4, 1, 1, 1, 1));
        assertMessage("virtual pipeline size 2 needs pipeline parallel size > 1",
                () -> ParallelLayout.of(2, 2, 1, 1, 1, 1, 2));
        ParallelLayout l = ParallelLayout.of(32, 4, 2, 2, 1, 2, 3);
        assertMessage("attention heads 14 not divisible by tensor parallel size 4",
                () -> l.validateModel(14, 4, 12, 8, 1024));
        assertMessage("key/value heads 2 not divisible by tensor parallel size 4",
                () -> l.validateModel(16, 2, 12, 8, 1024));
        assertMessage("layers 9 not divisible by pipeline parallel size 2", () -> l.validateModel(16, 4, 9, 8, 1024));
        assertMessage("layers 10 not divisible by pipeline parallel size 2 x virtual pipeline size 3 = 6",
                () -> l.validateModel(16, 4, 10, 8, 1024));
        assertMessage("experts 7 not divisible by expert parallel size 2", () -> l.validateModel(16, 4, 12, 7, 1024));
        assertMessage("sequence length 1026 not divisible by 2 x context parallel size 2 = 4",
                () -> l.validateModel(16, 4, 12, 8, 1026));
        l.validateModel(16, 4, 12, 8, 1024);
    }

    private static void assertMessage(String expected, Runnable r) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, r::run);
        assertTrue(e.getMessage().contains(expected), "message '" + e.getMessage() + "' lacks '" + expected + "'");
    }
}
