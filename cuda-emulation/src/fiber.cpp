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

// x86-64 System V: save the callee-saved registers plus MXCSR / x87 control word on the old stack, switch
// stacks, restore from the new one. A new fiber's stack is laid out so that the final `ret` lands in
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
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
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

void fiberMain(Block* b) {
    b->kernel->invoke(b->args);
    b->fibers[b->current].state = DONE;
    Fiber& f = b->fibers[b->current];
    sparkatron_emu_fiber_switch(&f.sp, b->schedSp);
}

void* initialStack(char* top, Block* b) {
    uintptr_t t = reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(t - 64);
    uint32_t mx;
    uint16_t cw;
    asm volatile("stmxcsr %0" : "=m"(mx));
    asm volatile("fnstcw %0" : "=m"(cw));
    std::memset(sp, 0, 64);
    std::memcpy(sp, &mx, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &cw, 2);
    sp[1] = 0;                                                      // r15
    sp[2] = 0;                                                      // r14
    sp[3] = reinterpret_cast<uint64_t>(&fiberMain);                 // r13: entry
    sp[4] = reinterpret_cast<uint64_t>(b);                          // r12: argument
    sp[5] = 0;                                                      // rbx
    sp[6] = 0;                                                      // rbp
    sp[7] = reinterpret_cast<uint64_t>(&sparkatron_emu_fiber_start);  // return address
    return sp;
}

void waitAt(State s) {
    Block* b = tlBlock;
    Fiber& f = b->fibers[b->current];
    f.state = s;
    sparkatron_emu_fiber_switch(&f.sp, b->schedSp);
}

/** Releases barriers whose groups have all arrived; returns whether anything was released. Sets error on divergence. */
bool release(Block& b) {
    size_t n = b.fibers.size();
    size_t live = 0, atBlock = 0;
    for (auto& f : b.fibers) {
        live += f.state != DONE;
        atBlock += f.state == WAIT_BLOCK;
    }
    bool released = false;
    if (atBlock > 0 && atBlock == live) {
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
    for (size_t w = 0; w < n; w += 32) {
        size_t end = std::min(n, w + 32);
        size_t waiting = 0, done = 0;
        for (size_t i = w; i < end; i++) {
            waiting += b.fibers[i].state == WAIT_WARP;
            done += b.fibers[i].state == DONE;
        }
        if (waiting > 0 && waiting + done == end - w) {
            if (done > 0) {
                b.error = "divergent warp operation: lanes " + std::to_string(w) + ".." + std::to_string(end - 1)
                        + " of the block reach a shuffle/vote/__syncwarp while " + std::to_string(done) + " exited";
                return false;
            }
            for (size_t i = w; i < end; i++) {
                b.fibers[i].state = RUNNABLE;
            }
            released = true;
        }
    }
    return released;
}

void runBlock(Block& b) {
    size_t n = b.fibers.size();
    char* st = stacks(n);
    for (size_t i = 0; i < n; i++) {
        Fiber& f = b.fibers[i];
        f.state = RUNNABLE;
        f.tid = dim3{(unsigned) (i % b.bdim.x), (unsigned) (i / b.bdim.x % b.bdim.y),
                     (unsigned) (i / ((size_t) b.bdim.x * b.bdim.y))};
        f.sp = initialStack(st + (i + 1) * kStackBytes, &b);
    }
    bool rev = reverseOrder();
    for (;;) {
        bool ran = false;
        for (size_t k = 0; k < n; k++) {
            size_t i = rev ? n - 1 - k : k;
            if (b.fibers[i].state == RUNNABLE) {
                b.current = (unsigned) i;
                sparkatron_emu_fiber_switch(&b.schedSp, b.fibers[i].sp);
                ran = true;
                if (!b.error.empty()) {
                    return;
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
        bool released = release(b);
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
    b.slots.assign(threads, 0);
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
    b->slots[me] = bits;
    waitAt(WAIT_WARP);
    unsigned src = warp0 + (unsigned) srcLane;
    uint64_t v = src < b->fibers.size() ? b->slots[src] : bits;
    waitAt(WAIT_WARP);  // nobody overwrites a slot before every lane has read
    return v;
}

uint32_t sparkatron_emu_ballot(int predicate) {
    Block* b = tlBlock;
    unsigned me = b->current;
    unsigned warp0 = me / 32 * 32;
    b->slots[me] = predicate != 0;
    waitAt(WAIT_WARP);
    uint32_t mask = 0;
    for (unsigned i = warp0; i < warp0 + 32 && i < b->fibers.size(); i++) {
        mask |= (b->slots[i] ? 1u : 0u) << (i - warp0);
    }
    waitAt(WAIT_WARP);
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
