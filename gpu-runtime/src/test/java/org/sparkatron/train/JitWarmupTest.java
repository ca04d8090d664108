package org.sparkatron.train;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.model.ModelConfig;

/**
 * {@link JitWarmup}: a model above the size limit is not warmed; a small one is, once per JVM, on a daemon thread
 * that trains its steps and ends by itself.
 */
class JitWarmupTest {
    private static Set<Thread> warmups() {
        Set<Thread> out = new java.util.HashSet<>();
        for (Thread t : Thread.getAllStackTraces().keySet()) {
            if (t.getName().equals("sparkatron-jit-warmup") && t.isAlive()) {
                out.add(t);
            }
        }
        return out;
    }

    @Test
    @Timeout(value = 60, unit = TimeUnit.SECONDS)
    void warmsASmallModelOncePerJvmOnADaemonThread() throws InterruptedException {
        ModelConfig large = new ModelConfig(ModelConfig.Family.GPT2, 12, 768, 12, 12, 3072, 50304, 64, 1e-5f, 0, true,
                ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        assertTrue(ModelFlops.parameters(large) > JitWarmup.MAX_PARAMETERS);
        assertFalse(JitWarmup.start(large, 64), "a 124M-parameter model is not copied for a warm-up");
        ModelConfig small = new ModelConfig(ModelConfig.Family.GPT2, 1, 32, 2, 2, 128, 97, 16, 1e-5f, 0, true,
                ModelConfig.DEFAULT_VOCAB_MULTIPLE);
        assertTrue(JitWarmup.start(small, 16));
        Set<Thread> running = warmups();
        running.forEach(t -> assertTrue(t.isDaemon(), "a warm-up never keeps the JVM alive"));
        assertFalse(JitWarmup.start(small, 16), "once per JVM");
        for (Thread t : running) {
            t.join(30_000);
        }
        assertTrue(warmups().isEmpty(), "the warm-up ended by itself");
        org.junit.jupiter.api.Assertions.assertEquals(JitWarmup.STEPS, JitWarmup.stepsTaken(), "it trained its steps");
        JitWarmup.awaitStopped(1000); // nothing left to stop: returns at once
    }
}
