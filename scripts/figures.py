#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Sum up the reliability figures of the last runs, as Markdown.

Reads, for each kernel that ran ($KP_TREE/run, run-debug, run-kasan), the
KTAP the guest wrote (results.ktap), the console log and the summary, and
prints one table: the tests counted, the console reports, and the figures
the tests print as "# kp-figure: ..." lines (fail-nth paths and steps, bad
input rows, stress iterations).  scripts/record.sh puts it in
results/figures.md and in the README; nothing in it is typed in by hand.
"""

import importlib.util
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('ktap_summary', os.path.join(HERE, 'ktap-summary.py'))
ktap_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ktap_summary)

FIGURE = re.compile(r'#\s*kp-figure:\s*(.*)$')
NTH = re.compile(r'fail-nth (\S+) (\S+): (\d+) steps failed in turn: (\d+) calls failed with ENOMEM, '
                 r'(\d+) failures absorbed \((\d+) answered -KVM_ENOMEM to the guest\); free pages ([+-]\d+)')
BAD = re.compile(r'bad input: (\d+) rows')
STRESS = re.compile(r'stress: (\d+) s, (\d+) vCPUs, (\d+) host threads: (\d+) conversions, (\d+) guest writes, '
                    r'(\d+) memory-fault exits, (\d+) punches, (\d+) fallocates \((\d+) ENOMEM\)')
LEFT = re.compile(r'stress: (\d+) pages removed, (\d+) left out of the direct map')

KERNELS = [('run', 'test kernel'), ('run-debug', 'debug kernel'), ('run-kasan', 'KASAN kernel')]


def figures(run):
    with open(os.path.join(run, 'results.ktap'), errors='replace') as f:
        lines = [m.group(1) for m in map(FIGURE.search, f) if m]
    nth = [NTH.search(l) for l in lines]
    nth = [m for m in nth if m]
    bad = [int(m.group(1)) for m in map(BAD.search, lines) if m]
    stress = [m for m in map(STRESS.search, lines) if m]
    left = [m for m in map(LEFT.search, lines) if m]
    with open(os.path.join(run, 'summary.txt'), errors='replace') as f:
        counted = f.read().strip().splitlines()[-1]
    splats = ktap_summary.console_splats(os.path.join(run, 'console.log'))
    release = '?'
    try:
        with open(os.path.join(run, 'console.log'), errors='replace') as f:
            m = re.match(r'Linux version (\S+)', f.readline())
            release = m.group(1) if m else '?'
    except OSError:
        pass
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(os.path.getmtime(os.path.join(run, 'summary.txt'))))
    g = lambda ms, i: sum(int(m.group(i)) for m in ms)
    row = {
        'counted': counted,
        'splats': str(len(splats)),
        'nth': ('%d paths x modes; %d steps failed in turn: %d calls failed with ENOMEM, '
                '%d failures absorbed (%d answered -KVM_ENOMEM to the guest); free pages %s..%s'
                % (len(nth), g(nth, 3), g(nth, 4), g(nth, 5), g(nth, 6),
                   min((m.group(7) for m in nth), key=int), max((m.group(7) for m in nth), key=int))
                if nth else 'not run'),
        'bad': '%d rows' % sum(bad) if bad else 'not run',
        'stress': ('%d run%s of %s s: %d conversions, %d guest writes, %d memory-fault exits, %d punches, '
                   '%d fallocates (%d ENOMEM); %d pages removed, %d left'
                   % (len(stress), '' if len(stress) == 1 else 's', '+'.join(m.group(1) for m in stress),
                      g(stress, 4), g(stress, 5),
                      g(stress, 6), g(stress, 7), g(stress, 8), g(stress, 9), g(left, 1), g(left, 2))
                   if stress else 'not run'),
    }
    return release, when, row


def main():
    tree = sys.argv[1]
    cols = []
    for sub, name in KERNELS:
        run = os.path.join(tree, sub)
        if not os.path.exists(os.path.join(run, 'summary.txt')):
            continue
        release, when, row = figures(run)
        cols.append(('%s (%s, %s)' % (name, release, when), row))
    print('<!-- written by scripts/figures.py from the runs named below: do not edit -->')
    print('| kernel | tests counted | console reports | fail-nth (every step of every removal path) '
          '| bad-input table | concurrency stress |')
    print('| --- | --- | --- | --- | --- | --- |')
    for name, r in cols:
        print('| %s | %s | %s | %s | %s | %s |' % (name, r['counted'], r['splats'], r['nth'], r['bad'],
                                                   r['stress']))


if __name__ == '__main__':
    main()
