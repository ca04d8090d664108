package org.sparkatron.comm.tcp;

import java.nio.file.Path;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.Communicators;
import org.sparkatron.comm.shm.ShmCommunicator;
import org.sparkatron.comm.shm.ShmOptions;
import org.sparkatron.comm.FileRendezvous;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * One rank as its own JVM process, for {@link MultiProcessTest}. Args: DIR RANK SIZE MODE [TRANSPORT], MODE
 * "ok" (run collectives and check them) or "die" (the last rank halts in the middle of an all-reduce),
 * TRANSPORT "tcp" (default) or "shm" ({@link Communicators#connect}: collectives through shared memory).
 * Prints one line "OK rank R" (with "shm" when shared memory was used) or "FAILED rank R peer P: message"
 * and exits 0 / 3.
 */
public final class CommWorker {
    private CommWorker() {
    }

    public static void main(String[] args) {
        Path dir = Path.of(args[0]);
        int rank = Integer.parseInt(args[1]);
        int size = Integer.parseInt(args[2]);
        String mode = args[3];
        TcpOptions opts = TcpOptions.loopback().withTimeouts(20_000, 20_000).withSizes(Integer.MAX_VALUE - 1024,
                64 << 10, 32 << 10);
        boolean shm = args.length > 4 && args[4].equals("shm");
        FileRendezvous rv = new FileRendezvous(dir, rank, size, 20_000);
        try (Communicator c = shm ? Communicators.connect(rank, size, rv, Ranks.SECRET, opts,
                ShmOptions.defaults().withEnabled(true).withSizes(64 << 10, 4 << 10))
                : TcpCommunicator.create(rank, size, rv, Ranks.SECRET, opts)) {
            if (mode.equals("die") && rank == size - 1) {
                Thread killer = new Thread(() -> {
                    try {
                        Thread.sleep(100);
                    } catch (InterruptedException ignored) {
                        // halt anyway
                    }
                    Runtime.getRuntime().halt(9);
                });
                killer.start();
            }
            if (mode.equals("die")) {
                Tensor t = Tensor.allocateHost(DType.F32, 2 << 20);
                for (int i = 0; i < 1000; i++) {
                    c.allReduce(t, ReduceOp.SUM);
                }
            } else {
                TcpCollectivesTest.exerciseAll(c, DType.F32, 300_001, 5);
                TcpCollectivesTest.exerciseAll(c, DType.BF16, 1001, 6);
                TcpCollectivesTest.exerciseAll(c, DType.I64, 7, 7);
            }
            System.out.println("OK rank " + rank + (c instanceof ShmCommunicator s && s.sharedMemory() ? " shm" : ""));
            System.out.flush();
        } catch (CommException e) {
            System.out.println("FAILED rank " + rank + " peer " + e.peer() + ": " + e.getMessage());
            System.out.flush();
            System.exit(3);
        }
    }
}
