#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Count the results of a kvm-protmem test run.

Reads the KTAP document the guest wrote (KUnit suites and selftests,
nested by indentation) and the kernel console log.  Prints one line per
test (PASS/FAIL/SKIP and its path) and ends with the line

    N passed, N failed, N skipped

Leaves are counted: a KUnit case, a result of a selftest that prints KTAP
of its own (a kselftest_harness case, one of memfd_secret's checks), or a
selftest that prints none; the same for the tests that the kselftest
runner ran (kselftest:runner...), whose output it prints as comments.  A parent that failed although none of its
children did (a crash after the last case, a timeout) counts as one more
failure.  Two checks of the run itself are counted as tests too:
kp:guest-finished (the guest reached the end of its init) and
kp:console-clean (no WARNING, BUG, Oops, lockdep, KASAN, ... on the console).

Exit status: 0 when nothing failed and something passed, 1 otherwise.
"""

import argparse
import re
import sys

RESULT = re.compile(r'^(?P<ok>ok|not ok) (?P<num>\d+)(?: -)?(?: (?P<name>[^#]*?))?\s*(?:#\s*(?P<dir>.*))?$')
VERSION = re.compile(r'^(?:K?TAP version \d+)$')
PLAN = re.compile(r'^1\.\.(\d+)')
# A run of the kselftest runner (run_kselftest.sh), as the guest's init
# names it: its results are the tests it ran, each with its output as the
# runner prints it, every line a comment.
# Its name for a test, "selftests: DIR: TEST", becomes DIR:TEST here.
RUNNER = 'kselftest:runner'
RUNNER_TEST = re.compile(r'^selftests: (?P<dir>[^:]+): (?P<test>\S+)$')


SPLATS = re.compile(
    r'(WARNING: |BUG: |kernel BUG at|Oops|Kernel panic|general protection fault|'
    r'possible circular locking|possible recursive locking|inconsistent lock state|'
    # Not "lockdep": the debug kernel prints "RCU lockdep checking is enabled".
    # Not "page dumped because: unmovable page": memory offlining reports
    # so the page that made it fail (gmem_no_direct_map_test offlines).
    r'lockdep is turned off|DEBUG_LOCKS_WARN_ON|suspicious RCU usage|'
    r'page dumped because(?!: unmovable page)|'
    r'KASAN|UBSAN|KFENCE|INFO: task .* blocked|rcu.*detected stall|'
    r'self-detected stall|Unable to handle kernel|Bad page state|'
    r'page still off the direct map|allocation from offline node)')


class Test:
    def __init__(self, name, ok, directive):
        self.name = name
        self.ok = ok
        self.directive = directive or ''
        self.children = []

    @property
    def skipped(self):
        return self.ok and self.directive.upper().startswith('SKIP')


def indent_of(line):
    return len(line) - len(line.lstrip(' '))


def parse(lines, depth, unwrap=False):
    """Results at indent `depth`; deeper lines before each belong to it.

    With `unwrap`, the comment lines at `depth` are a test's own output as
    the kselftest runner prints it ("# " before each line): they belong to
    the next result as if indented.
    """
    tests, pending = [], []
    for line in lines:
        ind = indent_of(line)
        m = RESULT.match(line[ind:])
        if ind == depth and m:
            # A result without a name ("ok 1 # SKIP ...", as kselftest.h's
            # ksft_exit_skip() prints it) is named by its number.
            name = (m.group('name') or '').strip() or m.group('num')
            r = RUNNER_TEST.match(name) if unwrap else None
            if r:
                name = r.group('dir') + ':' + r.group('test')
            t = Test(name, m.group('ok') == 'ok', m.group('dir'))
            # The runner calls exit status 2 (KSFT_XFAIL) "ok ... # XFAIL";
            # a program of the series never means it: a failure, as it is
            # when the init runs the program.
            if unwrap and t.directive.upper().startswith('XFAIL'):
                t.ok, t.directive = False, 'exit 2 (the runner says XFAIL)'
            if any(VERSION.match(p.strip()) for p in pending if indent_of(p) >= depth + 4):
                t.children = parse(pending, depth + 4, name.startswith(RUNNER))
                if name.startswith(RUNNER):
                    # The runner's plan: a test it never reported (it
                    # died, or the guest did) is a failure.
                    plan = next((int(m2.group(1)) for m2 in
                                 (PLAN.match(p.strip()) for p in pending
                                  if indent_of(p) == depth + 4) if m2), None)
                    if plan is not None and len(t.children) < plan:
                        t.children.append(Test('all-results-reported', False,
                                               '%d of %d results missing' %
                                               (plan - len(t.children), plan)))
            tests.append(t)
            pending = []
        elif ind > depth:
            pending.append(line)
        elif unwrap and line[ind:].startswith('#'):
            text = line[ind + 1:]
            pending.append(' ' * (depth + 4) + (text[1:] if text.startswith(' ') else text))
    return tests


def walk(test, prefix, out):
    """Append (status, path, note) for the leaves below `test`."""
    path = test.name if not prefix else prefix + '/' + test.name
    if prefix and prefix.split(':')[-1].split('/')[-1] == test.name:
        path = prefix  # KUnit repeats the suite name one level down
    if not test.children:
        status = 'SKIP' if test.skipped else ('PASS' if test.ok else 'FAIL')
        out.append((status, path, test.directive))
        return
    before = len(out)
    for c in test.children:
        walk(c, path, out)
    if not test.ok and not any(s == 'FAIL' for s, _, _ in out[before:]):
        out.append(('FAIL', path, test.directive or 'failed after its last case'))


def console_splats(path):
    try:
        with open(path, errors='replace') as f:
            return [l.rstrip() for l in f if SPLATS.search(l)]
    except OSError:
        return ['console log missing: ' + path]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('ktap')
    ap.add_argument('--console')
    ap.add_argument('--finished', choices=['yes', 'no'], default='yes')
    ap.add_argument('--no-skip', action='append', default=[], metavar='NAME',
                    help='a skip of NAME (or of a case below it) is a failure')
    args = ap.parse_args()

    try:
        with open(args.ktap, errors='replace') as f:
            lines = [l.rstrip('\r\n') for l in f]
    except OSError:
        lines = []

    top = parse(lines, 0)
    # The guest's init writes the KUnit results after boot.  When the guest
    # died before that, count the KUnit suites from the console instead,
    # where KUnit printed them while the kernel booted.
    if args.finished == 'no' and args.console and not any(t.name.startswith('kunit:') for t in top):
        try:
            with open(args.console, errors='replace') as f:
                cons = [l.rstrip('\r\n') for l in f]
        except OSError:
            cons = []
        for t in parse(cons, 0):
            t.name = 'kunit:' + t.name
            top.insert(0, t)
    results = []
    for t in top:
        walk(t, '', results)

    plan = next((int(m.group(1)) for m in map(PLAN.match, lines) if m), None)
    # "# kp: running NAME" names the test by its KTAP name, DIR:PROGRAM ARGS;
    # the KTAP of runs from before other directories' tests joined the KVM
    # selftests has the KVM path alone.
    running = [l[len('# kp: running '):] for l in lines if l.startswith('# kp: running ')]
    last = running[-1] if running else ''
    if last and ':' not in last.split(' ')[0]:
        last = 'kvm:' + last
    if last and not any(t.name == last for t in top):
        results.append(('FAIL', last, 'no result: the guest hung or crashed while it ran'))
        top.append(Test(last, False, None))
    if plan is not None and len(top) < plan:
        results.append(('FAIL', 'kp:all-results-reported',
                        '%d of %d results missing' % (plan - len(top), plan)))
    results.append(('PASS' if args.finished == 'yes' and plan is not None else 'FAIL',
                    'kp:guest-finished', '' if args.finished == 'yes' else 'no "# kp: done" line'))
    if args.console:
        splats = console_splats(args.console)
        results.append(('FAIL' if splats else 'PASS', 'kp:console-clean',
                        '%d suspicious lines' % len(splats) if splats else ''))
        for s in splats[:20]:
            print('  console: ' + s)

    # A test that must run here: its skip says the kernel or the guest
    # lacks what it tests (e.g. memfd_secret(2) returning ENOSYS).
    for i, (status, path, note) in enumerate(results):
        if status == 'SKIP' and any(path == n or path.startswith(n + '/') for n in args.no_skip):
            results[i] = ('FAIL', path, 'skipped, but must run here: ' + note)

    for status, path, note in results:
        print('%s %s%s' % (status, path, ' # ' + note if note else ''))
    n = {s: sum(1 for r in results if r[0] == s) for s in ('PASS', 'FAIL', 'SKIP')}
    print('%d passed, %d failed, %d skipped' % (n['PASS'], n['FAIL'], n['SKIP']))
    return 0 if n['FAIL'] == 0 and n['PASS'] > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
