package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.util.List;
import java.util.Locale;
import java.util.function.Consumer;
import org.apache.hadoop.conf.Configuration;
import org.sparkatron.checkpoint.CheckpointMetadata;
import org.sparkatron.checkpoint.DistributedCheckpoint;
import org.sparkatron.data.io.HadoopCheckpointStorage;
import org.sparkatron.optim.LrSchedule;

/**
 * The driver's look at the checkpoint a job will resume from, before launch: every checkpoint records the
 * resolved training config of the job that saved it ({@link RankTask#TRAIN_CONFIG}). A learning-rate schedule
 * that differs from it (typically {@code --steps} grown while {@code decay_steps} follows {@code steps}) is
 * refused, as Megatron refuses a changed scheduler, unless the config says which one to use:
 * {@code use_checkpoint_lr_schedule} (continue the old schedule: its lr, min_lr, warmup and decay steps are
 * taken into this job's config) or {@code override_lr_schedule} (take the new one; the jump is stated).
 * Blocking (reads the checkpoint's metadata); driver thread.
 */
final class ResumeCheck {
    private ResumeCheck() {
    }

    /** The config to run with (the checkpoint's schedule under use_checkpoint_lr_schedule); says what it decided. */
    static TrainConfig check(TrainConfig cfg, Configuration hadoopConf, Consumer<String> say) {
        if (cfg.checkpointDir == null || cfg.startOver) {
            return cfg;
        }
        java.util.Map<String, String> conf = new java.util.HashMap<>();
        hadoopConf.forEach(e -> conf.put(e.getKey(), e.getValue()));
        DistributedCheckpoint dc = new DistributedCheckpoint(HadoopCheckpointStorage.forPath(cfg.checkpointDir, conf),
                cfg.checkpointDir, cfg.keepCheckpoints);
        CheckpointMetadata meta;
        long step;
        try {
            List<Long> steps = dc.committedSteps();
            if (steps.isEmpty()) {
                return cfg;
            }
            step = steps.get(0);
            meta = dc.metadata(dc.dir(step));
        } catch (IOException e) {
            return cfg; // the ranks report what they find; an unreadable checkpoint is their decision to make
        }
        String saved = meta.extra().get(RankTask.TRAIN_CONFIG);
        if (saved == null) {
            say.accept("checkpoint " + dc.dir(step) + " records no training config (saved by an older version): LR schedule not compared");
            return cfg;
        }
        JsonNode old = DistributedTraining.metric(saved);
        LrSchedule was = new LrSchedule(old.path("lr").asDouble(), old.path("min_lr").asDouble(), old.path("warmup_steps").asLong(),
                old.path("decay_steps").asLong());
        LrSchedule now = cfg.schedule();
        if (was.equals(now)) {
            return cfg;
        }
        String change = String.format(Locale.ROOT, "the checkpoint of step %d (%s) was trained with %s; this job's schedule is %s%s, "
                        + "so the LR after step %d would go from %s to %s", step, dc.dir(step), describe(was), describe(now),
                now.decaySteps() != was.decaySteps() && !cfg.toJson().has("decay_steps") ? " (decay_steps follows steps)" : "",
                step, num(was.at(step)), num(now.at(step)));
        if (cfg.useCheckpointLrSchedule) {
            say.accept("LR schedule: continuing the checkpoint's (use_checkpoint_lr_schedule): " + describe(was));
            return cfg.with("lr", String.valueOf(was.maxLr())).with("min_lr", String.valueOf(was.minLr()))
                    .with("warmup_steps", String.valueOf(was.warmupSteps())).with("decay_steps", String.valueOf(was.decaySteps()));
        }
        if (cfg.overrideLrSchedule) {
            say.accept("LR schedule changed on resume (override_lr_schedule): " + change);
            return cfg;
        }
        throw new IllegalArgumentException("LR schedule changed on resume: " + change + ". Continue the old schedule with "
                + "use_checkpoint_lr_schedule=true (or decay_steps=" + was.decaySteps() + "), or take the new one with override_lr_schedule=true");
    }

    static String describe(LrSchedule s) {
        return String.format(Locale.ROOT, "lr %s, min_lr %s, warmup_steps %d, decay_steps %d", num(s.maxLr()), num(s.minLr()), s.warmupSteps(),
                s.decaySteps());
    }

    /** Six significant digits without trailing zeros: 0.01, 0.000445681. */
    private static String num(double v) {
        return new java.math.BigDecimal(String.format(Locale.ROOT, "%.6g", v)).stripTrailingZeros().toPlainString();
    }
}
