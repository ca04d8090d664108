package org.sparkatron.comm.tcp;

import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.NetworkInterface;
import java.net.SocketException;
import java.net.UnknownHostException;
import java.util.Collections;

/**
 * Settings of a {@link TcpCommunicator}. Immutable; the {@code with*} methods return modified copies.
 *
 * <ul>
 *   <li>{@code bindHost}: address the listener binds ("0.0.0.0" = all interfaces).</li>
 *   <li>{@code advertiseHost}: address published to the other ranks; null = the first non-loopback IPv4
 *       address of this host (loopback if there is none).</li>
 *   <li>{@code port}: listener port; 0 = any free port.</li>
 *   <li>{@code connectTimeoutMs}: bound on building the connection mesh (connect + authenticate).</li>
 *   <li>{@code opTimeoutMs}: bound on any single wait inside an operation; a peer that makes no progress for
 *       this long fails the communicator with an exception naming it. Must exceed the longest compute
 *       phase between matching operations (e.g. a pipeline stage's forward pass).</li>
 *   <li>{@code maxMessageBytes}: frames announcing more are rejected as malformed.</li>
 *   <li>{@code segmentBytes}: pipelining unit of the ring algorithms.</li>
 *   <li>{@code smallBytes}: at or below this many bytes per rank, collectives use one-round direct
 *       exchange (latency-optimal) instead of rings (bandwidth-optimal).</li>
 * </ul>
 */
public final class TcpOptions {
    public final String bindHost;
    public final String advertiseHost;
    public final int port;
    public final long connectTimeoutMs;
    public final long opTimeoutMs;
    public final int maxMessageBytes;
    public final int segmentBytes;
    public final int smallBytes;

    private TcpOptions(String bindHost, String advertiseHost, int port, long connectTimeoutMs, long opTimeoutMs,
                       int maxMessageBytes, int segmentBytes, int smallBytes) {
        if (connectTimeoutMs <= 0 || opTimeoutMs <= 0) {
            throw new IllegalArgumentException("timeouts must be > 0 ms, got connect=" + connectTimeoutMs
                    + " op=" + opTimeoutMs);
        }
        if (segmentBytes < 64 || smallBytes < 0 || maxMessageBytes < 1) {
            throw new IllegalArgumentException("bad sizes: segmentBytes=" + segmentBytes + " (>= 64), smallBytes="
                    + smallBytes + " (>= 0), maxMessageBytes=" + maxMessageBytes + " (>= 1)");
        }
        this.bindHost = bindHost;
        this.advertiseHost = advertiseHost;
        this.port = port;
        this.connectTimeoutMs = connectTimeoutMs;
        this.opTimeoutMs = opTimeoutMs;
        this.maxMessageBytes = maxMessageBytes;
        this.segmentBytes = segmentBytes;
        this.smallBytes = smallBytes;
    }

    /** All interfaces, advertised by this host's first non-loopback address; 2 min connect, 5 min op timeout. */
    public static TcpOptions defaults() {
        return new TcpOptions("0.0.0.0", null, 0, 120_000, 300_000, Integer.MAX_VALUE - 1024, 1 << 20, 32 << 10);
    }

    /** Loopback only (tests and single-host benchmarks). */
    public static TcpOptions loopback() {
        return defaults().withHosts("127.0.0.1", "127.0.0.1");
    }

    public TcpOptions withHosts(String bind, String advertise) {
        return new TcpOptions(bind, advertise, port, connectTimeoutMs, opTimeoutMs, maxMessageBytes, segmentBytes,
                smallBytes);
    }

    public TcpOptions withPort(int p) {
        return new TcpOptions(bindHost, advertiseHost, p, connectTimeoutMs, opTimeoutMs, maxMessageBytes,
                segmentBytes, smallBytes);
    }

    public TcpOptions withTimeouts(long connectMs, long opMs) {
        return new TcpOptions(bindHost, advertiseHost, port, connectMs, opMs, maxMessageBytes, segmentBytes,
                smallBytes);
    }

    public TcpOptions withSizes(int maxMessage, int segment, int small) {
        return new TcpOptions(bindHost, advertiseHost, port, connectTimeoutMs, opTimeoutMs, maxMessage, segment,
                small);
    }

    /** The address other ranks should dial. */
    String resolveAdvertiseHost() {
        if (advertiseHost != null) {
            return advertiseHost;
        }
        try {
            InetAddress local = InetAddress.getLocalHost();
            if (!local.isLoopbackAddress() && local instanceof Inet4Address) {
                return local.getHostAddress();
            }
            for (NetworkInterface ni : Collections.list(NetworkInterface.getNetworkInterfaces())) {
                if (!ni.isUp() || ni.isLoopback()) {
                    continue;
                }
                for (InetAddress a : Collections.list(ni.getInetAddresses())) {
                    if (a instanceof Inet4Address && !a.isLoopbackAddress()) {
                        return a.getHostAddress();
                    }
                }
            }
        } catch (UnknownHostException | SocketException e) {
            // Fall through to loopback: a single-host job still works.
        }
        return "127.0.0.1";
    }
}
