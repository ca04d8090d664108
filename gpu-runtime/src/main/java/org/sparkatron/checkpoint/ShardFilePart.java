package org.sparkatron.checkpoint;

import java.util.LinkedHashMap;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.Tensor;

/**
 * One file this rank writes: its name, where its size and CRC go in the rank's row, and its tensors (the
 * model's weights, or AdamW's m and v, of the dense parameters, the experts', or all: {@link ShardContent}), for
 * {@link AsyncCheckpointer}. Its tensors map is filled by {@link #copy}, {@link #copyOnHost} or {@link #views}; one
 * save's thread at a time.
 */
record ShardFilePart(String file, int slot, List<List<ShardContent.Piece>> pieces, boolean optim,
                     LinkedHashMap<String, Tensor> tensors) {
    ShardFilePart(String file, int slot, Transformer model, Boolean experts, boolean optim) {
        this(file, slot, optim
                ? List.of(ShardContent.layout(model, "optim.m/", experts), ShardContent.layout(model, "optim.v/", experts))
                : List.of(ShardContent.layout(model, "model/", experts)), optim, new LinkedHashMap<>());
    }

    long numel() {
        long n = 0;
        for (List<ShardContent.Piece> ps : pieces) {
            n += ShardContent.numel(ps);
        }
        return n;
    }

    /** {@code blocks}: the weights, m and v blocks to take the values from (whole, as the files hold them). */
    long copy(Device dev, Tensor[] blocks, Tensor staging, long at) {
        for (int i = 0; i < pieces.size(); i++) {
            at = ShardContent.copy(tensors, dev, blocks[optim ? 1 + i : 0], pieces.get(i), staging, at);
        }
        return at;
    }

    /** As {@link #copy}, by host memory copies: for blocks in host memory, on any thread. */
    long copyOnHost(Tensor[] blocks, Tensor staging, long at) {
        for (int i = 0; i < pieces.size(); i++) {
            at = ShardContent.copyOnHost(tensors, blocks[optim ? 1 + i : 0], pieces.get(i), staging, at);
        }
        return at;
    }

    void views(Device dev, Tensor[] blocks) {
        for (int i = 0; i < pieces.size(); i++) {
            ShardContent.views(tensors, dev, blocks[optim ? 1 + i : 0], pieces.get(i));
        }
    }
}
