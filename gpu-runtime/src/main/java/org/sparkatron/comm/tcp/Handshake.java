package org.sparkatron.comm.tcp;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * Mutual authentication of one connection with the job secret, before any data flows. Fixed-size binary
 * messages only (never deserialization):
 *
 * <pre>
 *   connector -> acceptor  HELLO     magic, version, world, fromRank, toRank, littleEndian, nonceC[32]
 *   acceptor  -> connector CHALLENGE magic, nonceA[32], HMAC(secret, "A" nonceC nonceA world from to)
 *   connector -> acceptor  PROOF     HMAC(secret, "C" nonceA nonceC world from to)
 *   acceptor  -> connector OK        magic
 * </pre>
 *
 * HMAC-SHA256 with fresh random nonces on both sides, so a recorded exchange cannot be replayed and the
 * two proofs cannot be swapped. MACs are compared in constant time. Blocking, bounded by the socket's
 * read timeout; stateless and thread-safe.
 */
final class Handshake {
    static final int HELLO = 0x53504b48;
    static final int CHALLENGE = 0x53504b43;
    static final int OK = 0x53504b4f;
    static final int VERSION = 1;
    private static final int NONCE = 32;
    private static final int HELLO_BYTES = 6 * 4 + NONCE;

    private Handshake() {
    }

    /** Thrown when a peer fails authentication or breaks the protocol. */
    static final class Rejected extends Exception {
        private static final long serialVersionUID = 1L;

        Rejected(String message) {
            super(message);
        }
    }

    /** Connector side; returns normally once both sides proved the secret. */
    static void connect(InputStream rawIn, OutputStream out, int self, int peer, int world, byte[] secret,
                        SecureRandom random) throws IOException, Rejected {
        DataInputStream in = new DataInputStream(rawIn);
        byte[] nonceC = new byte[NONCE];
        random.nextBytes(nonceC);
        ByteBuffer hello = ByteBuffer.allocate(HELLO_BYTES);
        hello.putInt(HELLO).putInt(VERSION).putInt(world).putInt(self).putInt(peer)
                .putInt(ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN ? 1 : 0).put(nonceC);
        out.write(hello.array());
        out.flush();
        int magic = in.readInt();
        if (magic != CHALLENGE) {
            throw new Rejected("rank " + peer + " answered with 0x" + Integer.toHexString(magic)
                    + " instead of a challenge (not a sparkatron rank of this job, or it refused rank " + self + ")");
        }
        byte[] nonceA = new byte[NONCE];
        in.readFully(nonceA);
        byte[] macA = new byte[32];
        in.readFully(macA);
        if (!MessageDigest.isEqual(macA, mac(secret, 'A', nonceC, nonceA, world, self, peer))) {
            throw new Rejected("rank " + peer + " failed to prove the job secret (wrong secret, or another job)");
        }
        out.write(mac(secret, 'C', nonceA, nonceC, world, self, peer));
        out.flush();
        int ok = in.readInt();
        if (ok != OK) {
            throw new Rejected("rank " + peer + " did not confirm authentication (got 0x" + Integer.toHexString(ok) + ")");
        }
    }

    /**
     * Acceptor side: validates the HELLO (magic, version, world size, target rank, byte order) and the
     * proof; returns the authenticated peer rank, which is one of the ranks above {@code self}.
     */
    static int accept(InputStream rawIn, OutputStream out, int self, int world, byte[] secret, SecureRandom random)
            throws IOException, Rejected {
        DataInputStream in = new DataInputStream(rawIn);
        byte[] helloBytes = new byte[HELLO_BYTES];
        in.readFully(helloBytes);
        ByteBuffer hello = ByteBuffer.wrap(helloBytes);
        int magic = hello.getInt();
        if (magic != HELLO) {
            throw new Rejected("bad hello magic 0x" + Integer.toHexString(magic) + " (not a sparkatron peer)");
        }
        int version = hello.getInt();
        int peerWorld = hello.getInt();
        int from = hello.getInt();
        int to = hello.getInt();
        int little = hello.getInt();
        if (version != VERSION) {
            throw new Rejected("protocol version " + version + ", expected " + VERSION);
        }
        if (peerWorld != world || to != self || from <= self || from >= world) {
            throw new Rejected("hello from rank " + from + " to rank " + to + " of world " + peerWorld
                    + " does not fit rank " + self + " of world " + world);
        }
        if (little != (ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN ? 1 : 0)) {
            throw new Rejected("rank " + from + " has a different byte order");
        }
        byte[] nonceC = new byte[NONCE];
        hello.get(nonceC);
        byte[] nonceA = new byte[NONCE];
        random.nextBytes(nonceA);
        ByteBuffer challenge = ByteBuffer.allocate(4 + NONCE + 32);
        challenge.putInt(CHALLENGE).put(nonceA).put(mac(secret, 'A', nonceC, nonceA, world, from, self));
        out.write(challenge.array());
        out.flush();
        byte[] proof = new byte[32];
        try {
            in.readFully(proof);
        } catch (java.io.EOFException e) {
            throw new Rejected("rank " + from + " closed the connection instead of proving the job secret"
                    + " (it holds a different secret, or it is not a rank of this job)");
        }
        if (!MessageDigest.isEqual(proof, mac(secret, 'C', nonceA, nonceC, world, from, self))) {
            throw new Rejected("rank " + from + " failed to prove the job secret");
        }
        new DataOutputStream(out).writeInt(OK);
        out.flush();
        return from;
    }

    private static byte[] mac(byte[] secret, char role, byte[] n1, byte[] n2, int world, int from, int to) {
        try {
            Mac m = Mac.getInstance("HmacSHA256");
            m.init(new SecretKeySpec(secret, "HmacSHA256"));
            m.update((byte) role);
            m.update(n1);
            m.update(n2);
            m.update(ByteBuffer.allocate(12).putInt(world).putInt(from).putInt(to).array());
            return m.doFinal();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 unavailable", e);
        }
    }
}
