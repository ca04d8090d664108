// Runs a kernel grid on the CPU: blocks one after another on the calling (stream) thread, the threads of a
// block as fibers with their own stacks. A fiber runs until it reaches a barrier (__syncthreads, a warp
// shuffle or vote, __syncwarp) or ends; the scheduler releases a barrier when every live thread of its
// block (or warp) waits at it. Threads that wait at different barriers, or a barrier some threads of the
// block skipped by exiting, are reported as the kernel's failure instead of hanging as on a GPU.
//
// SPARKATRON_CUDA_EMU_ORDER=reverse runs the threads (and blocks) in reverse order: a missing
// __syncthreads shows up under one order and not the other.
#include "kernel_entry.h"
#include "emu_runtime.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" void sparkatron_emu_fiber_switch(void** saveSp, void* newSp);
extern "C" void sparkatron_emu_fiber_start();

// x86-64 System V: save the callee-saved registers on the old stack, switch stacks, restore from the new
// one. MXCSR and the x87 control word (rounding modes, exception masks) are not switched: no kernel changes
// them, so every fiber runs with the stream thread's, and loading them on every switch (ldmxcsr, fldcw) would
// only cost time. A new fiber's stack is laid out so that the final `ret` lands in
// sparkatron_emu_fiber_start with the entry function in r13 and its argument in r12.
asm(R"(
    .text
    .globl sparkatron_emu_fiber_switch
    .type sparkatron_emu_fiber_switch,@function
sparkatron_emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sparkatron_emu_fiber_switch, .-sparkatron_emu_fiber_switch

    .globl sparkatron_emu_fiber_start
    .type sparkatron_emu_fiber_start,@function
sparkatron_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size sparkatron_emu_fiber_start, .-sparkatron_emu_fiber_start
)");

namespace {

constexpr size_t kStackBytes = 64 * 1024;
enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
    void* sp;
    State state;
    unsigned warpOps;  // shuffles and votes so far: their parity picks the slot bank
    dim3 tid;
};

struct Block {
    const emu::KernelEntry* kernel = nullptr;
    void** args = nullptr;
    dim3 bidx{}, bdim{}, gdim{};
    void* smem = nullptr;
    std::vector<Fiber> fibers;
    std::vector<uint64_t> slots;
    void* schedSp = nullptr;
    unsigned current = 0;
    std::string error;
};

thread_local Block* tlBlock = nullptr;
thread_local char* tlStacks = nullptr;
thread_local size_t tlStackCount = 0;
thread_local std::vector<unsigned char> tlSmem;

bool reverseOrder() {
    static const bool rev = [] {
        const char* o = std::getenv("SPARKATRON_CUDA_EMU_ORDER");
        return o != nullptr && std::strcmp(o, "reverse") == 0;
    }();
    return rev;
}

char* stacks(size_t n) {
    if (tlStackCount < n) {
        if (tlStacks != nullptr) {
            munmap(tlStacks, tlStackCount * kStackBytes);
        }
        void* p = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) {
            throw emu::Failure("cannot map fiber stacks for " + std::to_string(n) + " threads",
                               CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
        }
        tlStacks = static_cast<char*>(p);
        tlStackCount = n;
    }
    return tlStacks;
}

// Stack tops 64 KiB apart share their cache sets: the fibers of a warp would evict each other's frames on
// every switch. Each top is moved down by a different multiple of
// a cache line (at most kColourBytes), so consecutive fibers' frames fall in different sets.
constexpr size_t kColourBytes = 8 * 1024;
size_t stackColour(size_t i) { return (i * 17 % (kColourBytes / 64)) * 64; }

void fiberMain(Block* b) {
    b->kernel->invoke(b->args);
    b->fibers[b->current].state = DONE;
    Fiber& f = b->fibers[b->current];
    sparkatron_emu_fiber_switch(&f.sp, b->schedSp);
}

void* initialStack(char* top, Block* b) {
    uintptr_t t = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
    // six registers and the return address: after the switch's `ret` the stack pointer is t, 16-byte aligned
    // as the ABI wants before fiber_start's call
    uint64_t* sp = reinterpret_cast<uint64_t*>(t - 56);
    sp[0] = 0;                                                      // r15
    sp[1] = 0;                                                      // r14
    sp[2] = reinterpret_cast<uint64_t>(&fiberMain);                 // r13: entry
    sp[3] = reinterpret_cast<uint64_t>(b);                          // r12: argument
    sp[4] = 0;                                                      // rbx
    sp[5] = 0;                                                      // rbp
    sp[6] = reinterpret_cast<uint64_t>(&sparkatron_emu_fiber_start);  // return address
    return sp;
}

// A shuffle or vote writes the lane's value into a slot, waits for the warp, and reads its source lane's slot.
// Two banks, alternating per operation: a lane can write the next operation's value only after the whole warp
// reached that operation's barrier, i.e. after every lane read this one's, and the one after that reuses this
// bank only after the next barrier. So one barrier per operation suffices (a single bank needed two).
uint64_t* slotBank(Block* b, unsigned me) {
    unsigned parity = b->fibers[me].warpOps++ & 1u;
    return b->slots.data() + (size_t) parity * b->fibers.size();
}

void waitAt(State s) {
    Block* b = tlBlock;
    Fiber& f = b->fibers[b->current];
    f.state = s;
    sparkatron_emu_fiber_switch(&f.sp, b->schedSp);
}

/** Releases the block barrier if every live thread waits at it; sets error if some exited instead. */
bool releaseBlock(Block& b) {
    size_t n = b.fibers.size();
    size_t live = 0, atBlock = 0;
    for (auto& f : b.fibers) {
        live += f.state != DONE;
        atBlock += f.state == WAIT_BLOCK;
    }
    if (atBlock == 0 || atBlock != live) {
        return false;
    }
    if (live < n) {
        b.error = "divergent __syncthreads: " + std::to_string(n - live) + " of " + std::to_string(n)
                + " threads exited while the others wait at a barrier";
        return false;
    }
    for (auto& f : b.fibers) {
        f.state = RUNNABLE;
    }
    return true;
}

/** Releases warp [w, end)'s barrier if all its lanes wait at it; sets error if some exited instead. */
bool releaseWarp(Block& b, size_t w, size_t end) {
    size_t waiting = 0, done = 0;
    for (size_t i = w; i < end; i++) {
        waiting += b.fibers[i].state == WAIT_WARP;
        done += b.fibers[i].state == DONE;
    }
    if (waiting == 0 || waiting + done != end - w) {
        return false;
    }
    if (done > 0) {
        b.error = "divergent warp operation: lanes " + std::to_string(w) + ".." + std::to_string(end - 1)
                + " of the block reach a shuffle/vote/__syncwarp while " + std::to_string(done) + " exited";
        return false;
    }
    for (size_t i = w; i < end; i++) {
        b.fibers[i].state = RUNNABLE;
    }
    return true;
}

// The scheduler runs one warp at a time: its lanes until each waits at a barrier or exits, releasing the warp's
// own barriers (shuffles, votes, __syncwarp) as soon as all 32 lanes reach them, so only one warp's stacks are
// in use at a time (a round over the whole block's 1024 stacks missed the caches on every switch). Then the
// next warp; when no warp can go on, the block barrier is released if every thread waits at it. Any order that
// respects the barriers is one a GPU may run, and the reverse order (SPARKATRON_CUDA_EMU_ORDER) still runs the
// warps, and the lanes within a warp, the other way round.
void runBlock(Block& b) {
    size_t n = b.fibers.size();
    char* st = stacks(n);
    for (size_t i = 0; i < n; i++) {
        Fiber& f = b.fibers[i];
        f.state = RUNNABLE;
        f.warpOps = 0;
        f.tid = dim3{(unsigned) (i % b.bdim.x), (unsigned) (i / b.bdim.x % b.bdim.y),
                     (unsigned) (i / ((size_t) b.bdim.x * b.bdim.y))};
        f.sp = initialStack(st + (i + 1) * kStackBytes - stackColour(i), &b);
    }
    bool rev = reverseOrder();
    size_t warps = (n + 31) / 32;
    for (;;) {
        bool ran = false;
        for (size_t kw = 0; kw < warps; kw++) {
            size_t w = (rev ? warps - 1 - kw : kw) * 32;
            size_t end = std::min(n, w + 32);
            for (;;) {
                for (size_t k = w; k < end; k++) {
                    size_t i = rev ? end - 1 - (k - w) : k;
                    if (b.fibers[i].state == RUNNABLE) {
                        b.current = (unsigned) i;
                        sparkatron_emu_fiber_switch(&b.schedSp, b.fibers[i].sp);
                        ran = true;
                        if (!b.error.empty()) {
                            return;
                        }
                    }
                }
                bool released = releaseWarp(b, w, end);
                if (!b.error.empty()) {
                    return;
                }
                if (!released) {
                    break;
                }
            }
        }
        bool allDone = true;
        for (auto& f : b.fibers) {
            allDone &= f.state == DONE;
        }
        if (allDone) {
            return;
        }
        bool released = releaseBlock(b);
        if (!b.error.empty()) {
            return;
        }
        if (!ran && !released) {
            b.error = "deadlock: threads of the block wait at different barriers (divergent __syncthreads or "
                      "warp operation)";
            return;
        }
    }
}

}  // namespace

namespace emu {

void run_grid(const KernelEntry* k, dim3 grid, dim3 block, size_t smemBytes, void** args) {
    size_t threads = (size_t) block.x * block.y * block.z;
    Block b;
    b.kernel = k;
    b.args = args;
    b.bdim = block;
    b.gdim = grid;
    b.fibers.resize(threads);
    b.slots.assign(2 * threads, 0);
    if (tlSmem.size() < smemBytes) {
        tlSmem.resize(smemBytes);
    }
    // fresh shared memory holds garbage on a GPU: fill with NaN bytes so reads before writes show
    std::memset(tlSmem.data(), 0xff, smemBytes);
    b.smem = tlSmem.data();
    Block* saved = tlBlock;
    tlBlock = &b;
    size_t nBlocks = (size_t) grid.x * grid.y * grid.z;
    bool rev = reverseOrder();
    for (size_t k2 = 0; k2 < nBlocks; k2++) {
        size_t i = rev ? nBlocks - 1 - k2 : k2;
        b.bidx = dim3{(unsigned) (i % grid.x), (unsigned) (i / grid.x % grid.y), (unsigned) (i / ((size_t) grid.x * grid.y))};
        runBlock(b);
        if (!b.error.empty()) {
            tlBlock = saved;
            throw Failure(std::string("kernel ") + k->name + " block (" + std::to_string(b.bidx.x) + ","
                          + std::to_string(b.bidx.y) + "," + std::to_string(b.bidx.z) + "): " + b.error);
        }
    }
    tlBlock = saved;
}

}  // namespace emu

extern "C" {

const dim3* sparkatron_emu_thread_idx(void) { return &tlBlock->fibers[tlBlock->current].tid; }
const dim3* sparkatron_emu_block_idx(void) { return &tlBlock->bidx; }
const dim3* sparkatron_emu_block_dim(void) { return &tlBlock->bdim; }
const dim3* sparkatron_emu_grid_dim(void) { return &tlBlock->gdim; }
void* sparkatron_emu_dynamic_smem(void) { return tlBlock->smem; }

void sparkatron_emu_syncthreads(void) { waitAt(WAIT_BLOCK); }

void sparkatron_emu_syncwarp(void) { waitAt(WAIT_WARP); }

uint64_t sparkatron_emu_shfl(uint64_t bits, int srcLane, int /*width*/) {
    Block* b = tlBlock;
    unsigned me = b->current;
    unsigned warp0 = me / 32 * 32;
    uint64_t* bank = slotBank(b, me);
    bank[me] = bits;
    waitAt(WAIT_WARP);
    unsigned src = warp0 + (unsigned) srcLane;
    return src < b->fibers.size() ? bank[src] : bits;
}

uint32_t sparkatron_emu_ballot(int predicate) {
    Block* b = tlBlock;
    unsigned me = b->current;
    unsigned warp0 = me / 32 * 32;
    uint64_t* bank = slotBank(b, me);
    bank[me] = predicate != 0;
    waitAt(WAIT_WARP);
    uint32_t mask = 0;
    for (unsigned i = warp0; i < warp0 + 32 && i < b->fibers.size(); i++) {
        mask |= (bank[i] ? 1u : 0u) << (i - warp0);
    }
    return mask;
}

void sparkatron_emu_trap(const char* why) {
    Block* b = tlBlock;
    b->error = std::string("thread (") + std::to_string(b->fibers[b->current].tid.x) + ") trapped: " + why;
    Fiber& f = b->fibers[b->current];
    f.state = DONE;
    sparkatron_emu_fiber_switch(&f.sp, b->schedSp);
}

}  // extern "C"
