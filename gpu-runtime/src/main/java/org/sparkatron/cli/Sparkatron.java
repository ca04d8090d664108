package org.sparkatron.cli;

/** Entry point of {@code ./sparkatron} for the single-process subcommands. */
public final class Sparkatron {
    private Sparkatron() {
    }

    public static void main(String[] args) {
        System.out.println("usage: ./sparkatron <init|train-local|score|bench|demo> [options]");
    }
}
