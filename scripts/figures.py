#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Sum up the reliability figures of the last runs, as Markdown.

Reads, for each kernel that ran ($KP_TREE/run, run-debug, run-kasan), the
KTAP the guest wrote (results.ktap), the console log and the summary, and
prints one table: the tests counted, the console reports, and the figures
the tests print as "# kp-figure: ..." lines (fail-nth paths and steps, bad
input rows, stress iterations).  scripts/record.sh puts it in
results/figures.md and in the README; given JSON_FILE, it also writes the
same figures there as numbers (results/figures.json, for the cover letter).  Nothing in them
is typed in by hand.
"""

import importlib.util
import json
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
                 r'(\d+) failures absorbed \((\d+) answered -(?:KVM_)?ENOMEM to the guest\); free pages ([+-]\d+)')
BAD = re.compile(r'bad input: (\d+) rows')
STRESS = re.compile(r'stress: (\d+) s, (\d+) vCPUs, (\d+) host threads: (\d+) conversions, (\d+) guest writes, '
                    r'(\d+) memory-fault exits, (\d+) punches, (\d+) fallocates \((\d+) ENOMEM\)')
LEFT = re.compile(r'stress: (\d+) pages removed, (\d+) left out of the direct map')

KERNELS = [('run', 'test kernel'), ('run-debug', 'debug kernel'), ('run-kasan', 'KASAN kernel')]


def figures(run, name):
    """The figures of one kernel's run, as numbers (None for a test that did not run)."""
    with open(os.path.join(run, 'results.ktap'), errors='replace') as f:
        lines = [m.group(1) for m in map(FIGURE.search, f) if m]
    nth = [m for m in map(NTH.search, lines) if m]
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
    free = [int(m.group(7)) for m in nth]
    return {
        'kernel': name, 'release': release, 'when': when, 'counted': counted,
        'splats': len(splats),
        'nth': {'cases': len(nth), 'steps': g(nth, 3), 'enomem': g(nth, 4), 'absorbed': g(nth, 5),
                'guest': g(nth, 6), 'free_min': min(free), 'free_max': max(free)} if nth else None,
        'bad': sum(bad) if bad else None,
        'stress': {'secs': [int(m.group(1)) for m in stress], 'conversions': g(stress, 4),
                   'writes': g(stress, 5), 'exits': g(stress, 6), 'punches': g(stress, 7),
                   'fallocates': g(stress, 8), 'enomem': g(stress, 9), 'removed': g(left, 1),
                   'left': g(left, 2)} if stress else None,
    }


def markdown(runs):
    out = ['<!-- written by scripts/figures.py from the runs named below: do not edit -->',
           '| kernel | tests counted | console reports | fail-nth (every step of every removal path) '
           '| bad-input table | concurrency stress |',
           '| --- | --- | --- | --- | --- | --- |']
    for r in runs:
        n, s = r['nth'], r['stress']
        nth = ('%d paths x modes; %d steps failed in turn: %d calls failed with ENOMEM, '
               '%d failures absorbed (%d answered -ENOMEM to the guest); free pages %+d..%+d'
               % (n['cases'], n['steps'], n['enomem'], n['absorbed'], n['guest'], n['free_min'],
                  n['free_max']) if n else 'not run')
        stress = ('%d run%s of %s s: %d conversions, %d guest writes, %d memory-fault exits, %d punches, '
                  '%d fallocates (%d ENOMEM); %d pages removed, %d left'
                  % (len(s['secs']), '' if len(s['secs']) == 1 else 's', '+'.join(map(str, s['secs'])),
                     s['conversions'], s['writes'], s['exits'], s['punches'], s['fallocates'],
                     s['enomem'], s['removed'], s['left']) if s else 'not run')
        out.append('| %s (%s, %s) | %s | %d | %s | %s | %s |' % (
            r['kernel'], r['release'], r['when'], r['counted'], r['splats'], nth,
            '%d rows' % r['bad'] if r['bad'] is not None else 'not run', stress))
    return '\n'.join(out) + '\n'


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit('usage: figures.py KP_TREE [JSON_FILE]')
    runs = [figures(os.path.join(sys.argv[1], sub), name) for sub, name in KERNELS
            if os.path.exists(os.path.join(sys.argv[1], sub, 'summary.txt'))]
    if len(sys.argv) == 3:
        with open(sys.argv[2], 'w') as f:
            json.dump(runs, f, indent=1)
            f.write('\n')
    sys.stdout.write(markdown(runs))


if __name__ == '__main__':
    main()
