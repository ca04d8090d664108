package org.sparkatron.comm.shm;

import java.io.IOException;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.security.SecureRandom;
import org.sparkatron.comm.Communicator;
import org.sparkatron.device.HostAccess;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Which ranks of a world can share memory, found once when the world communicator is created. Ranks that
 * report the same host (host name, kernel boot id, shared-memory directory) are candidates; the lowest of
 * them writes a random token into a probe file and the others must read that very token back, which proves
 * they see the same directory (two containers on one kernel with private {@code /dev/shm}s report the same
 * boot id but would otherwise wait forever on files the other cannot see). A rank whose probe fails, or whose
 * transport is switched off, stays on TCP.
 *
 * <p>Collective over the world (three small all-gathers over TCP); immutable afterwards and shared by the
 * world's sub-groups.
 */
final class HostMap {
    /** Identity of this JVM (ranks with equal ids are threads of one process and can read each other's memory). */
    private static final long JVM_ID = new SecureRandom().nextLong();
    /** Job-unique prefix of this world's file names (from rank 0). */
    final String prefix;
    /** Per world rank: the lowest world rank of its verified host group, or -1 (no shared memory). */
    private final int[] host;
    private final long[] jvm;

    private HostMap(String prefix, int[] host, long[] jvm) {
        this.prefix = prefix;
        this.host = host;
        this.jvm = jvm;
    }

    /** The lowest world rank of {@code worldRank}'s verified host group, or -1 (no shared memory: a host of its own). */
    int hostOf(int worldRank) {
        return host[worldRank];
    }

    /** Whether the ranks are threads of one JVM (then they may read and write each other's tensors). */
    boolean sameJvm(int[] worldRanks) {
        for (int r : worldRanks) {
            if (jvm[r] != jvm[worldRanks[0]]) {
                return false;
            }
        }
        return true;
    }

    /** Whether every rank of {@code worldRanks} is in one verified host group (and there are at least two). */
    boolean sameHost(int[] worldRanks) {
        if (worldRanks.length < 2 || host[worldRanks[0]] < 0) {
            return false;
        }
        for (int r : worldRanks) {
            if (host[r] != host[worldRanks[0]]) {
                return false;
            }
        }
        return true;
    }

    static HostMap discover(Communicator world, ShmOptions opts) {
        int n = world.size();
        int me = world.rank();
        SecureRandom random = new SecureRandom();
        boolean usable = opts.usable();
        long[] first = allGather(world, new long[] {usable ? hostKey(opts.dir) : 0, random.nextLong() & Long.MAX_VALUE,
            JVM_ID});
        String prefix = "sparkatron-" + Long.toHexString(first[1]) + "-";
        int[] leader = new int[n];
        for (int r = 0; r < n; r++) {
            leader[r] = -1;
            if (first[3 * r] != 0) {
                for (int l = 0; l <= r; l++) {
                    if (first[3 * l] == first[3 * r]) {
                        leader[r] = l;
                        break;
                    }
                }
            }
        }
        Path probe = usable ? opts.dir.resolve(prefix + "host-" + leader[me]) : null;
        long token = 0;
        if (usable && leader[me] == me) {
            token = random.nextLong() | 1;
            try {
                Files.write(probe, Long.toHexString(token).getBytes(StandardCharsets.US_ASCII));
            } catch (IOException e) {
                token = 0;
            }
        }
        long[] tokens = allGather(world, new long[] {token});
        boolean ok = false;
        if (usable) {
            if (leader[me] == me) {
                ok = token != 0;
            } else if (tokens[leader[me]] != 0) {
                try {
                    String seen = new String(Files.readAllBytes(probe), StandardCharsets.US_ASCII);
                    ok = seen.equals(Long.toHexString(tokens[leader[me]]));
                } catch (IOException e) {
                    ok = false;
                }
            }
        }
        long[] oks = allGather(world, new long[] {ok ? 1 : 0});
        if (leader[me] == me && token != 0) {
            try {
                Files.deleteIfExists(probe);
            } catch (IOException e) {
                // a few bytes in /dev/shm; nothing depends on it
            }
        }
        int[] host = new int[n];
        long[] jvm = new long[n];
        for (int r = 0; r < n; r++) {
            host[r] = oks[r] == 1 && oks[leader[r]] == 1 ? leader[r] : -1;
            jvm[r] = first[3 * r + 2];
        }
        return new HostMap(prefix, host, jvm);
    }

    /** 63 bits of SHA-256 of host name, boot id and the shared-memory directory; never 0. */
    private static long hostKey(Path dir) {
        String boot = "";
        try {
            boot = Files.readString(Path.of("/proc/sys/kernel/random/boot_id")).trim();
        } catch (IOException | RuntimeException e) {
            // not Linux: the probe file decides
        }
        String name;
        try {
            name = InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            name = "localhost";
        }
        String dirName;
        try {
            dirName = dir.toRealPath().toString();
        } catch (IOException e) {
            dirName = dir.toAbsolutePath().toString();
        }
        try {
            byte[] h = MessageDigest.getInstance("SHA-256").digest((name + "|" + boot + "|" + dirName)
                    .getBytes(StandardCharsets.UTF_8));
            long k = 0;
            for (int i = 0; i < 8; i++) {
                k = (k << 8) | (h[i] & 0xff);
            }
            return (k & Long.MAX_VALUE) | 1;
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 unavailable", e);
        }
    }

    /** Every rank's {@code mine}, concatenated in rank order (over the TCP world). */
    static long[] allGather(Communicator world, long[] mine) {
        Tensor in = Tensor.allocateHost(DType.I64, mine.length);
        Tensor out = Tensor.allocateHost(DType.I64, (long) mine.length * world.size());
        long[] all = new long[mine.length * world.size()];
        try (HostAccess.Scope a = HostAccess.enter()) {
            in.hostBuffer().asLongBuffer().put(mine);
            world.allGather(in, out);
            out.hostBuffer().asLongBuffer().get(all);
        }
        return all;
    }
}
