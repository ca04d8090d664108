package org.sparkatron.spark;

import java.io.Serializable;
import java.util.Map;
import org.apache.spark.api.plugin.DriverPlugin;
import org.apache.spark.api.plugin.ExecutorPlugin;
import org.apache.spark.api.plugin.PluginContext;
import org.apache.spark.api.plugin.SparkPlugin;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Sparkatron's Spark plugin ({@code --conf spark.plugins=org.sparkatron.spark.SparkatronPlugin}): training
 * progress travels over Spark's own RPC ({@link PluginContext#send}) instead of the driver socket the
 * zero-configuration path opens, the training figures are registered in Spark's metrics system (so the JMX,
 * Prometheus, Graphite ... sinks a cluster already runs see them, under the plugin's source), and the Spark
 * UI gets a live "Sparkatron" tab (loss curve, throughput, layout). See {@link SparkatronDriverPlugin}.
 *
 * <p>Without the plugin everything still works through {@link ProgressServer}. The executor side keeps its
 * {@link PluginContext} for the ranks of its JVM (one executor per JVM: executor state, not rank state).
 */
public final class SparkatronPlugin implements SparkPlugin {
    @Override
    public DriverPlugin driverPlugin() {
        return new SparkatronDriverPlugin();
    }

    @Override
    public ExecutorPlugin executorPlugin() {
        return new Executor();
    }

    /** A progress line of job {@code job} (the job's key, derived from its secret). */
    record Progress(String job, String line) implements Serializable {
    }

    /** Asked after the last line: answered once every earlier message of the sender has been handled. */
    record Flush(String job) implements Serializable {
    }

    /** Asked by a rank before it fails with a {@link DeterministicFailure}: answered once the driver acted. */
    record Failure(String job, boolean badInput, String message) implements Serializable {
    }

    private static volatile PluginContext executorContext;

    /** The executor side's plugin context in this JVM, or null where the plugin is not installed. */
    static PluginContext executorContext() {
        return executorContext;
    }

    static final class Executor implements ExecutorPlugin {
        @Override
        public void init(PluginContext ctx, Map<String, String> extraConf) {
            executorContext = ctx;
        }

        @Override
        public void shutdown() {
            executorContext = null;
        }
    }

    /**
     * The rank side of the RPC channel: one {@link PluginContext#send} per line (asynchronous, ordered), and a
     * blocking {@link PluginContext#ask} for {@link #flush}.
     */
    static final class Channel implements ProgressChannel {
        private static final Logger LOG = LoggerFactory.getLogger(Channel.class);
        private final String job;
        private PluginContext ctx;

        Channel(String job) {
            this.job = job;
            this.ctx = executorContext();
            if (ctx == null) {
                LOG.warn("sparkatron: the driver has the Sparkatron plugin but this executor does not; no live progress from it");
            }
        }

        @Override
        public void report(String jsonLine) {
            if (ctx == null) {
                return;
            }
            try {
                ctx.send(new Progress(job, jsonLine));
            } catch (java.io.IOException | RuntimeException e) {
                LOG.warn("sparkatron: progress over Spark RPC stopped: {}", e.toString());
                ctx = null;
            }
        }

        @Override
        public void flush() {
            if (ctx == null) {
                return;
            }
            try {
                ctx.ask(new Flush(job));
            } catch (Exception e) {
                LOG.warn("sparkatron: progress flush over Spark RPC: {}", e.toString());
            }
        }

        @Override
        public void close() {
            ctx = null;
        }
    }
}
