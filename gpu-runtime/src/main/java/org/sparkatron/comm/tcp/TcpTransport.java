package org.sparkatron.comm.tcp;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.sparkatron.comm.CommException;
import org.sparkatron.comm.Rendezvous;

/**
 * The full mesh of authenticated connections of one rank to every other rank of the world, built once
 * and shared by every group ({@link TcpCommunicator} world and sub-groups). Owns the failure state: the
 * first failure (lost connection, malformed frame, timeout, abort) is recorded, told to every peer (ABORT
 * frame naming the rank at fault) and makes every pending and later operation throw.
 *
 * <p>Mesh: each rank binds a listener, publishes "host:port" through the rendezvous, dials every lower
 * rank and accepts every higher one; each connection is authenticated ({@link Handshake}) before use.
 * Connections that fail authentication or send garbage are logged and dropped, never trusted; the mesh
 * waits for the genuine rank until the connect timeout, then fails naming the ranks still missing.
 */
final class TcpTransport {
    static final System.Logger LOG = System.getLogger("org.sparkatron.comm.tcp");

    private final int rank;
    private final int size;
    private final TcpOptions options;
    private final Connection[] conns;
    private final AtomicReference<CommException> failure = new AtomicReference<>();
    private final Map<Integer, Boolean> groupIds = new ConcurrentHashMap<>();
    private final AtomicInteger rejected = new AtomicInteger();
    private volatile boolean closed;

    private TcpTransport(int rank, int size, TcpOptions options) {
        this.rank = rank;
        this.size = size;
        this.options = options;
        this.conns = new Connection[size];
    }

    int rank() {
        return rank;
    }

    int size() {
        return size;
    }

    TcpOptions options() {
        return options;
    }

    CommException failure() {
        return failure.get();
    }

    int rejectedConnections() {
        return rejected.get();
    }

    /** Registers a group id on this rank; ids must be unique among live groups. */
    void registerGroup(int id) {
        if (groupIds.putIfAbsent(id, Boolean.TRUE) != null) {
            throw new IllegalArgumentException("group id " + id + " is already in use on rank " + rank);
        }
    }

    void unregisterGroup(int id) {
        groupIds.remove(id);
    }

    Connection conn(int peer) {
        return conns[peer];
    }

    /** The exception an operation throws once the transport failed: names the same peer as the cause. */
    CommException failedOp(CommException cause) {
        return new CommException("rank " + rank + ": " + cause.getMessage(), cause.peer(), cause);
    }

    /** Records the first failure, tells the peers, and releases the sockets. Later calls are ignored. */
    void fail(CommException e) {
        if (!failure.compareAndSet(null, e)) {
            return;
        }
        if (!closed) {
            LOG.log(System.Logger.Level.WARNING, "rank " + rank + " fails its communicator: " + e.getMessage());
        }
        Thread t = new Thread(() -> {
            for (Connection c : conns) {
                // The rank at fault is told too: it may be alive (a stuck rank, a sender of bad frames).
                if (c != null) {
                    c.sendAbort(e.getMessage(), e.peer());
                }
            }
            // Let the ABORT frames reach the peers before the sockets go (closing with unread input resets).
            try {
                Thread.sleep(500);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
            }
            for (Connection c : conns) {
                if (c != null) {
                    c.closeNow();
                }
            }
        }, "sparkatron-comm-r" + rank + "-abort");
        t.setDaemon(true);
        t.start();
    }

    void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (failure.get() != null) {
            return;
        }
        List<Thread> closers = new ArrayList<>();
        for (Connection c : conns) {
            if (c != null) {
                Thread t = new Thread(() -> c.closeGracefully(2000), "sparkatron-comm-r" + rank + "-close");
                t.start();
                closers.add(t);
            }
        }
        for (Thread t : closers) {
            try {
                t.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        failure.compareAndSet(null, new CommException("communicator of rank " + rank + " is closed", -1));
    }

    /** Builds the mesh; blocks up to the connect timeout (plus the rendezvous's own wait). */
    static TcpTransport connect(int rank, int size, Rendezvous rv, byte[] secret, TcpOptions options) {
        if (secret == null || secret.length < 16) {
            throw new IllegalArgumentException("job secret must have at least 16 bytes, got "
                    + (secret == null ? "none" : secret.length));
        }
        if (rv.rank() != rank || rv.size() != size) {
            throw new IllegalArgumentException("rendezvous is for rank " + rv.rank() + " of " + rv.size()
                    + ", communicator for rank " + rank + " of " + size);
        }
        TcpTransport t = new TcpTransport(rank, size, options);
        long deadline = System.nanoTime() + options.connectTimeoutMs * 1_000_000L;
        SecureRandom random = new SecureRandom();
        try (ServerSocketChannel server = ServerSocketChannel.open()) {
            server.bind(new InetSocketAddress(options.bindHost, options.port), size + 16);
            int port = ((InetSocketAddress) server.getLocalAddress()).getPort();
            byte[][] blobs = rv.allGather((options.resolveAdvertiseHost() + ":" + port).getBytes(StandardCharsets.UTF_8));
            InetSocketAddress[] addrs = new InetSocketAddress[size];
            for (int r = 0; r < size; r++) {
                addrs[r] = parse(blobs[r], r);
            }
            Map<Integer, SocketChannel> accepted = new ConcurrentHashMap<>();
            List<String> rejections = new CopyOnWriteArrayList<>();
            Thread acceptor = new Thread(() -> acceptLoop(t, server, secret, random, deadline, accepted, rejections),
                    "sparkatron-comm-r" + rank + "-accept");
            acceptor.setDaemon(true);
            acceptor.start();
            for (int peer = 0; peer < rank; peer++) {
                t.conns[peer] = new Connection(t, peer, dial(t, peer, addrs[peer], secret, random, deadline));
            }
            acceptor.join(Math.max(1, (deadline - System.nanoTime()) / 1_000_000L + 1000));
            List<Integer> missing = new ArrayList<>();
            for (int peer = rank + 1; peer < size; peer++) {
                SocketChannel ch = accepted.get(peer);
                if (ch == null) {
                    missing.add(peer);
                } else {
                    t.conns[peer] = new Connection(t, peer, ch);
                }
            }
            if (!missing.isEmpty()) {
                throw new CommException("rank " + rank + ": rank " + missing.get(0) + " did not connect and authenticate within "
                        + options.connectTimeoutMs + " ms (missing: " + missing + ")" + (rejections.isEmpty() ? "" : "; rejected connections: "
                        + rejections), missing.get(0));
            }
        } catch (IOException e) {
            t.closeAll();
            throw new CommException("rank " + rank + ": cannot set up the TCP mesh: " + e, -1, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            t.closeAll();
            throw new CommException("rank " + rank + ": interrupted while connecting", -1, e);
        } catch (RuntimeException e) {
            t.closeAll();
            throw e;
        }
        for (Connection c : t.conns) {
            if (c != null) {
                c.start();
            }
        }
        if (size > 1) {
            Thread w = new Thread(t::watchdog, "sparkatron-comm-r" + rank + "-watchdog");
            w.setDaemon(true);
            w.start();
        }
        return t;
    }

    /**
     * A write blocks outside any timed wait (small sends go out from the caller's thread, and the writer
     * thread's own writes): if one makes no progress for the operation timeout, the peer is frozen or the
     * network is gone, and the transport fails naming it, which closes the socket and unblocks the write.
     */
    private void watchdog() {
        long limit = options.opTimeoutMs * 1_000_000L;
        while (failure.get() == null && !closed) {
            try {
                Thread.sleep(Math.min(200, Math.max(10, options.opTimeoutMs / 10)));
            } catch (InterruptedException e) {
                return;
            }
            for (Connection c : conns) {
                if (c != null && c.writeStalledNs() > limit) {
                    fail(new CommException("rank " + rank + ": a write to rank " + c.peer + " made no progress for "
                            + options.opTimeoutMs + " ms (rank " + c.peer + " is frozen or unreachable)", c.peer));
                }
            }
        }
    }

    private void closeAll() {
        for (Connection c : conns) {
            if (c != null) {
                c.closeNow();
            }
        }
    }

    private static InetSocketAddress parse(byte[] blob, int r) {
        String s = new String(blob, StandardCharsets.UTF_8);
        int colon = s.lastIndexOf(':');
        try {
            int port = Integer.parseInt(s.substring(colon + 1));
            if (colon <= 0 || port <= 0 || port > 65535) {
                throw new NumberFormatException();
            }
            return new InetSocketAddress(s.substring(0, colon), port);
        } catch (NumberFormatException e) {
            throw new CommException("rank " + r + " published an invalid endpoint '" + s + "' (expected host:port)", r);
        }
    }

    private static SocketChannel dial(TcpTransport t, int peer, InetSocketAddress addr, byte[] secret,
                                      SecureRandom random, long deadline) throws IOException {
        IOException last = null;
        while (System.nanoTime() < deadline) {
            SocketChannel ch = SocketChannel.open();
            try {
                Socket s = ch.socket();
                s.connect(addr, (int) Math.max(1, Math.min(5000, (deadline - System.nanoTime()) / 1_000_000L)));
                s.setSoTimeout((int) Math.max(1, (deadline - System.nanoTime()) / 1_000_000L));
                Handshake.connect(s.getInputStream(), s.getOutputStream(), t.rank, peer, t.size, secret, random);
                s.setSoTimeout(0);
                tune(ch);
                return ch;
            } catch (Handshake.Rejected e) {
                ch.close();
                throw new CommException("rank " + t.rank + ": authentication with rank " + peer + " at " + addr
                        + " failed: " + e.getMessage(), peer);
            } catch (IOException e) {
                ch.close();
                last = e;
                try {
                    Thread.sleep(20);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    throw new IOException("interrupted", ie);
                }
            }
        }
        throw new CommException("rank " + t.rank + ": could not connect to rank " + peer + " at " + addr + " within "
                + t.options.connectTimeoutMs + " ms: " + last, peer, last);
    }

    private static void acceptLoop(TcpTransport t, ServerSocketChannel server, byte[] secret, SecureRandom random,
                                   long deadline, Map<Integer, SocketChannel> accepted, List<String> rejections) {
        int expected = t.size - 1 - t.rank;
        try {
            server.socket().setSoTimeout(100);
            while (accepted.size() < expected && System.nanoTime() < deadline) {
                SocketChannel ch;
                try {
                    ch = server.socket().accept().getChannel();
                } catch (SocketTimeoutException e) {
                    continue;
                }
                // Authenticate each connection on its own thread so a silent client cannot stall the others.
                Thread h = new Thread(() -> {
                    String from = String.valueOf(ch.socket().getRemoteSocketAddress());
                    try {
                        Socket s = ch.socket();
                        s.setSoTimeout((int) Math.max(1, Math.min(10_000, (deadline - System.nanoTime()) / 1_000_000L)));
                        int peer = Handshake.accept(s.getInputStream(), s.getOutputStream(), t.rank, t.size, secret, random);
                        s.setSoTimeout(0);
                        tune(ch);
                        if (accepted.putIfAbsent(peer, ch) != null) {
                            throw new Handshake.Rejected("rank " + peer + " is already connected");
                        }
                    } catch (Handshake.Rejected | IOException e) {
                        t.rejected.incrementAndGet();
                        rejections.add(from + ": " + (e instanceof Handshake.Rejected ? e.getMessage() : e.toString()));
                        LOG.log(System.Logger.Level.WARNING, "rank " + t.rank + " rejected connection from " + from
                                + ": " + e.getMessage());
                        try {
                            ch.close();
                        } catch (IOException ignored) {
                            // Nothing more to do with a rejected socket.
                        }
                    }
                }, "sparkatron-comm-r" + t.rank + "-handshake");
                h.setDaemon(true);
                h.start();
            }
            // Give handshakes in flight a moment to land before the caller counts.
            long end = Math.min(deadline, System.nanoTime() + 10_000_000_000L);
            while (accepted.size() < expected && System.nanoTime() < end) {
                Thread.sleep(10);
            }
        } catch (IOException e) {
            rejections.add("listener failed: " + e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void tune(SocketChannel ch) throws IOException {
        ch.configureBlocking(true);
        ch.socket().setTcpNoDelay(true);
        ch.socket().setKeepAlive(true);
    }

    /** Test hook: fails silently and drops every socket at once, as a killed process would. */
    void crash() {
        closed = true;
        failure.compareAndSet(null, new CommException("rank " + rank + " crashed (test)", rank));
        closeAll();
    }

    /** Test hook: stops reading from every peer (the process looks frozen to them). */
    void freezeReaders() {
        for (Connection c : conns) {
            if (c != null) {
                c.frozenForTest = true;
            }
        }
    }

    /** Test hook: raw bytes to a peer. */
    void writeRaw(int peer, byte[] bytes) throws IOException {
        conns[peer].writeRaw(ByteBuffer.wrap(bytes));
    }
}
