package org.sparkatron.device;

import java.util.Locale;

/** A device cannot hold what was asked of it; the message names the bytes asked for and available. */
public final class DeviceMemoryException extends RuntimeException {
    private final long requested;
    private final long available;

    public DeviceMemoryException(String device, String what, long requested, long available) {
        super(String.format(Locale.ROOT, "%s: %s needs %,d bytes (%.2f GiB) but the device has %,d bytes (%.2f GiB) available",
                device, what, requested, requested / 1073741824.0, available, available / 1073741824.0));
        this.requested = requested;
        this.available = available;
    }

    public long requested() {
        return requested;
    }

    public long available() {
        return available;
    }
}
