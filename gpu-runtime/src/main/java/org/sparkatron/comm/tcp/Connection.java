package org.sparkatron.comm.tcp;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.ReentrantLock;
import org.sparkatron.comm.CommException;

/**
 * One authenticated TCP connection to one peer, shared by every group of the transport.
 *
 * <p>Wire format after the handshake: frames of a 24-byte big-endian header {magic, kind, group, tag,
 * length(long)} followed by {@code length} payload bytes (tensor bytes in native order). Kinds: DATA,
 * ABORT (payload: UTF-8 reason; tag: the rank at fault), GOODBYE (orderly close). Every header is
 * validated; a bad magic, unknown kind or a length above the limit fails the transport naming the peer.
 *
 * <p>Threads: a reader thread reads frames and matches them, by (group, tag) in FIFO order, to posted
 * receives; a payload whose receive is already posted is read straight into the destination buffer,
 * otherwise into a buffer that the later receive copies from. A writer thread drains the send queue, so
 * sends never wait for receives and many can be in flight both ways. Small sends go out inline from the
 * caller's thread when nothing is queued (saves a thread hand-off on the latency path).
 */
final class Connection {
    static final int MAGIC = 0x53504b46;
    static final int DATA = 1;
    static final int ABORT = 2;
    static final int GOODBYE = 3;
    static final int HEADER = 24;
    static final int MAX_REASON = 4096;
    private static final int INLINE_BYTES = 64 << 10;

    final int peer;
    private final SocketChannel ch;
    private final TcpTransport owner;
    private final Object lock = new Object();
    private final Map<Long, ArrayDeque<Op>> posted = new HashMap<>();
    private final Map<Long, ArrayDeque<ByteBuffer>> unexpected = new HashMap<>();
    private final LinkedBlockingQueue<Op> sendQueue = new LinkedBlockingQueue<>();
    private final AtomicInteger queued = new AtomicInteger();
    private final ReentrantLock writeLock = new ReentrantLock();
    private final ByteBuffer writeHeader = ByteBuffer.allocateDirect(HEADER).order(ByteOrder.BIG_ENDIAN);
    private final Thread reader;
    private final Thread writer;
    /** Recycled buffers for messages that arrive before their receive is posted (avoids allocation churn). */
    private final ArrayDeque<ByteBuffer> pool = new ArrayDeque<>();
    private static final int POOL_MAX = 32;
    /** When the write in progress last moved a byte (System.nanoTime), 0 when no write is in progress. */
    private volatile long writeProgressNs;
    private volatile boolean peerSaidGoodbye;
    /** Test hook: a frozen reader stops reading, as a SIGSTOPped process would. */
    volatile boolean frozenForTest;
    private volatile boolean stopping;

    Connection(TcpTransport owner, int peer, SocketChannel ch) {
        this.owner = owner;
        this.peer = peer;
        this.ch = ch;
        String name = "sparkatron-comm-r" + owner.rank() + "-p" + peer;
        reader = new Thread(this::readLoop, name + "-reader");
        writer = new Thread(this::writeLoop, name + "-writer");
        reader.setDaemon(true);
        writer.setDaemon(true);
    }

    void start() {
        reader.start();
        writer.start();
    }

    private static long key(int group, int tag) {
        return ((long) group << 32) | (tag & 0xffffffffL);
    }

    Op send(int group, int tag, ByteBuffer payload) {
        Op op = new Op(owner, true, peer, group, tag, payload);
        if (peerSaidGoodbye) {
            owner.fail(new CommException("rank " + owner.rank() + " sends to rank " + peer
                    + ", which already closed its communicator", peer));
        }
        if (payload.remaining() <= INLINE_BYTES && writeLock.tryLock()) {
            try {
                if (queued.get() == 0 && owner.failure() == null) {
                    writeFrame(DATA, group, tag, payload);
                    op.complete();
                    return op;
                }
            } catch (IOException e) {
                owner.fail(lost(e));
                return op;
            } finally {
                writeLock.unlock();
            }
        }
        queued.incrementAndGet();
        sendQueue.add(op);
        return op;
    }

    Op recv(int group, int tag, ByteBuffer dst) {
        Op op = new Op(owner, false, peer, group, tag, dst);
        ByteBuffer early;
        long k = key(group, tag);
        synchronized (lock) {
            ArrayDeque<ByteBuffer> q = unexpected.get(k);
            early = q == null ? null : q.poll();
            if (early == null) {
                if (peerSaidGoodbye && !reader.isAlive()) {
                    owner.fail(new CommException("rank " + owner.rank() + " waits for a message from rank " + peer
                            + ", which already closed its communicator", peer));
                    return op;
                }
                posted.computeIfAbsent(k, x -> new ArrayDeque<>()).add(op);
                return op;
            }
        }
        deliver(op, early);
        return op;
    }

    private void deliver(Op op, ByteBuffer data) {
        if (data.remaining() != op.buf.remaining()) {
            owner.fail(sizeMismatch(op, data.remaining()));
            return;
        }
        op.buf.duplicate().put(data);
        op.complete();
        recycle(data);
    }

    private ByteBuffer take(int len) {
        synchronized (pool) {
            for (java.util.Iterator<ByteBuffer> it = pool.iterator(); it.hasNext(); ) {
                ByteBuffer b = it.next();
                if (b.capacity() >= len && b.capacity() <= 2L * len + 4096) {
                    it.remove();
                    return b.clear().limit(len);
                }
            }
        }
        return ByteBuffer.allocateDirect(len);
    }

    private void recycle(ByteBuffer b) {
        if (b.capacity() == 0) {
            return;
        }
        synchronized (pool) {
            if (pool.size() < POOL_MAX) {
                pool.add(b);
            }
        }
    }

    private CommException sizeMismatch(Op op, long got) {
        return new CommException("rank " + peer + " sent " + got + " bytes on group " + op.group + " tag " + op.tag
                + " but rank " + owner.rank() + " expects " + op.buf.remaining()
                + " bytes (mismatched counts or operation order)", peer);
    }

    private CommException lost(Exception e) {
        return new CommException("connection from rank " + owner.rank() + " to rank " + peer + " lost: " + e, peer, e);
    }

    private void readLoop() {
        try {
            readFrames();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void readFrames() throws InterruptedException {
        ByteBuffer h = ByteBuffer.allocateDirect(HEADER).order(ByteOrder.BIG_ENDIAN);
        try {
            while (true) {
                while (frozenForTest && !stopping) {
                    Thread.sleep(10);
                }
                h.clear();
                readFully(h);
                h.flip();
                int magic = h.getInt();
                int kind = h.getInt();
                int group = h.getInt();
                int tag = h.getInt();
                long len = h.getLong();
                if (magic != MAGIC || kind < DATA || kind > GOODBYE || len < 0
                        || len > (kind == DATA ? owner.options().maxMessageBytes : MAX_REASON)) {
                    String what = "malformed frame from rank " + peer + " (magic 0x" + Integer.toHexString(magic)
                            + ", kind " + kind + ", length " + len + ", limit " + owner.options().maxMessageBytes
                            + "); closing the communicator";
                    TcpTransport.LOG.log(System.Logger.Level.WARNING, "rank " + owner.rank() + ": " + what);
                    owner.fail(new CommException(what, peer));
                    return;
                }
                if (kind == ABORT) {
                    ByteBuffer r = ByteBuffer.allocate((int) len);
                    readFully(r);
                    String reason = new String(r.array(), StandardCharsets.UTF_8);
                    int culprit = tag >= 0 && tag < owner.size() ? tag : peer;
                    owner.fail(new CommException("rank " + peer + " aborted the communicator: " + reason, culprit));
                    return;
                }
                if (kind == GOODBYE) {
                    peerSaidGoodbye = true;
                    continue;
                }
                readData(group, tag, (int) len);
            }
        } catch (IOException e) {
            if (stopping || owner.failure() != null) {
                return;
            }
            if (peerSaidGoodbye && e instanceof EOFException) {
                synchronized (lock) {
                    for (ArrayDeque<Op> q : posted.values()) {
                        if (!q.isEmpty()) {
                            owner.fail(new CommException("rank " + peer + " closed its communicator while rank "
                                    + owner.rank() + " waited for its message (group " + q.peek().group + ")", peer));
                            return;
                        }
                    }
                }
                return;
            }
            owner.fail(lost(e));
        }
    }

    private void readData(int group, int tag, int len) throws IOException {
        long k = key(group, tag);
        Op op;
        synchronized (lock) {
            ArrayDeque<Op> q = posted.get(k);
            op = q == null ? null : q.poll();
        }
        if (op != null) {
            if (op.buf.remaining() != len) {
                owner.fail(sizeMismatch(op, len));
                throw new EOFException("size mismatch");
            }
            readFully(op.buf.duplicate());
            op.complete();
            return;
        }
        ByteBuffer early = take(len);
        readFully(early);
        early.flip();
        synchronized (lock) {
            ArrayDeque<Op> q = posted.get(k);
            op = q == null ? null : q.poll();
            if (op == null) {
                unexpected.computeIfAbsent(k, x -> new ArrayDeque<>()).add(early);
                return;
            }
        }
        deliver(op, early);
    }

    private void readFully(ByteBuffer b) throws IOException {
        while (b.hasRemaining()) {
            if (ch.read(b) < 0) {
                throw new EOFException("end of stream");
            }
        }
    }

    private void writeLoop() {
        try {
            while (true) {
                Op op = sendQueue.poll(100, TimeUnit.MILLISECONDS);
                if (op == null) {
                    if (stopping || owner.failure() != null) {
                        return;
                    }
                    continue;
                }
                writeLock.lock();
                try {
                    if (owner.failure() != null) {
                        return;
                    }
                    if (op.buf == null) {
                        writeFrame(GOODBYE, 0, 0, ByteBuffer.allocate(0));
                        ch.shutdownOutput();
                        return;
                    }
                    writeFrame(DATA, op.group, op.tag, op.buf.duplicate());
                } finally {
                    writeLock.unlock();
                }
                queued.decrementAndGet();
                op.complete();
            }
        } catch (IOException e) {
            if (!stopping && owner.failure() == null) {
                owner.fail(lost(e));
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Writes one frame; caller holds writeLock. */
    private void writeFrame(int kind, int group, int tag, ByteBuffer payload) throws IOException {
        writeHeader.clear();
        writeHeader.putInt(MAGIC).putInt(kind).putInt(group).putInt(tag).putLong(payload.remaining()).flip();
        ByteBuffer[] both = {writeHeader, payload};
        writeProgressNs = System.nanoTime();
        try {
            while (writeHeader.hasRemaining() || payload.hasRemaining()) {
                if (ch.write(both) > 0) {
                    writeProgressNs = System.nanoTime();
                }
            }
        } finally {
            writeProgressNs = 0;
        }
    }

    /** Nanoseconds since the write in progress last made progress; 0 if none is in progress. */
    long writeStalledNs() {
        long t = writeProgressNs;
        return t == 0 ? 0 : System.nanoTime() - t;
    }

    /** Test hook: raw bytes on the wire, as a broken or hostile peer would send them. */
    void writeRaw(ByteBuffer bytes) throws IOException {
        writeLock.lock();
        try {
            while (bytes.hasRemaining()) {
                ch.write(bytes);
            }
        } finally {
            writeLock.unlock();
        }
    }

    /** Best effort: tell the peer why we abort (waits briefly for an in-progress write), then half-close. */
    void sendAbort(String reason, int culprit) {
        try {
            if (writeLock.tryLock(200, TimeUnit.MILLISECONDS)) {
                try {
                    byte[] r = reason.getBytes(StandardCharsets.UTF_8);
                    ByteBuffer payload = ByteBuffer.wrap(r, 0, Math.min(r.length, MAX_REASON));
                    writeFrame(ABORT, 0, culprit, payload);
                    ch.shutdownOutput();
                } finally {
                    writeLock.unlock();
                }
            }
        } catch (IOException | InterruptedException e) {
            // The peer is gone or we are interrupted: it will see the connection drop instead.
        }
    }

    /** Orderly close: GOODBYE after every queued send, then wait (bounded) for the peer's end of stream. */
    void closeGracefully(long waitMs) {
        sendQueue.add(new Op(owner, true, peer, 0, 0, null));
        queued.incrementAndGet();
        try {
            writer.join(waitMs);
            reader.join(waitMs);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        closeNow();
    }

    void closeNow() {
        stopping = true;
        try {
            ch.close();
        } catch (IOException e) {
            // Already closed.
        }
    }
}
