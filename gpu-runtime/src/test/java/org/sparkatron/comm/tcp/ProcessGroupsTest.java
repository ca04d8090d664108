package org.sparkatron.comm.tcp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ParallelLayout.Group;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.comm.SelfCommunicator;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/** Every group of a layout over one 8-rank TCP world: right members, isolated traffic, no new sockets. */
class ProcessGroupsTest {
    private static long countCommThreads(int rank) {
        String prefix = "sparkatron-comm-r" + rank + "-p";
        return Thread.getAllStackTraces().keySet().stream().filter(t -> t.getName().startsWith(prefix)).count();
    }

    @Test
    @Timeout(90)
    void everyGroupReducesOverExactlyItsMembers() throws Exception {
        ParallelLayout layout = ParallelLayout.of(8, 2, 1, 2, 1, 2, 1);
        Ranks.run(8, TcpCollectivesTest.opts(), (r, world) -> {
            long before = countCommThreads(r);
            ProcessGroups pg = ProcessGroups.create(layout, world);
            assertEquals(before, countCommThreads(r), "creating groups must not open connections");
            for (Group kind : Group.values()) {
                int[] members = layout.group(kind, r);
                Communicator c = pg.get(kind);
                if (members.length == 0) {
                    assertNull(c, kind + " on rank " + r);
                    continue;
                }
                assertEquals(members.length, c.size(), kind.toString());
                assertEquals(Arrays.binarySearch(members, r), c.rank(), kind + " local rank");
                if (members.length == 1) {
                    assertTrue(c instanceof SelfCommunicator, kind + " of size 1 is free");
                }
                Tensor t = Tensor.allocateHost(DType.I64, 3);
                t.hostBuffer().putLong(0, r + 1);
                c.allReduce(t, ReduceOp.SUM);
                assertEquals(Arrays.stream(members).mapToLong(m -> m + 1).sum(), t.hostBuffer().getLong(0),
                        kind + " on rank " + r + " members " + Arrays.toString(members));
            }
            // Two groups used at once from two threads of the same rank: TP all-reduces and PP point-to-point.
            Communicator tp = pg.tp();
            Communicator pp = pg.pp();
            CompletableFuture<Void> ppTraffic = CompletableFuture.runAsync(() -> {
                for (int i = 0; i < 20; i++) {
                    Tensor m = Tensor.allocateHost(DType.I32, 1000 + i);
                    if (pp.rank() == 0) {
                        m.ints().put(0, r * 100 + i);
                        pp.send(m, 1, i);
                    } else {
                        pp.recv(m, 0, i);
                        int src = layout.group(Group.PP, r)[0];
                        assertEquals(src * 100 + i, m.ints().get(0));
                    }
                }
            });
            for (int i = 0; i < 20; i++) {
                Tensor t = Tensor.allocateHost(DType.F32, 5000);
                t.floats().put(7, r + i);
                tp.allReduce(t, ReduceOp.MAX);
                int[] members = layout.group(Group.TP, r);
                assertEquals(members[members.length - 1] + i, t.floats().get(7), 0f);
            }
            ppTraffic.get();
            pg.close();
            world.barrier();
            return null;
        });
    }
}
