#!/usr/bin/env python3
"""dekr_amp on bad input (issue 8): each case must end with ONE clear line on stderr,
`dekr_amp: error: ...`, naming what is wrong and where, a non-zero exit status, and nothing that
was already in the work dir lost or changed.

Cases: missing config file; unknown key (file and --cfg-options); wrong type; a work dir that
cannot be created / is not writable; a dataset path without the annotation file; a dataset whose
images are missing; a corrupted checkpoint for `train --resume` and for `test`. And the one case
that must NOT stop a run: a single corrupt image is skipped, counted and named at the epoch's end.

Runs the real binary on the host backend (--device host), so it needs no GPU.
Usage: test_dekr_amp_bad_input.py --tool build/examples/dekr_amp/dekr_amp
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_CFG = os.path.join(ROOT, 'configs', 'demo_host.toml')
SAMPLE = os.path.join(ROOT, 'data', 'coco_sample')
# Small and short, so that a case that wrongly starts training still ends quickly.
SMALL = ['codec.input_size=[64, 64]', 'codec.heatmap_size=[16, 16]', 'train_cfg.max_iters=1',
         'train_cfg.val_interval=0', 'train_cfg.num_workers=1', 'runtime.host_threads=1']

failures = []


def snapshot(d):
    """{relative path: bytes} of every file under d."""
    out = {}
    for base, _, files in os.walk(d):
        for f in files:
            p = os.path.join(base, f)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


def lost_files(before, after):
    """Files of `before` that a failed command removed or damaged. The logs may only grow (a
    command of the same second appends to the same log) and config.toml is the resolved config
    of the latest command (rewritten atomically); everything else must be byte-identical."""
    lost = []
    for p, data in before.items():
        now = after.get(p)
        if now is None:
            lost.append(p + ' (removed)')
        elif p.startswith('logs' + os.sep) or p == 'scalars.jsonl':
            if not now.startswith(data):
                lost.append(p + ' (not append-only)')
        elif p != 'config.toml' and now != data:
            lost.append(p + ' (changed)')
    return lost


def case(name, tool, args, must_contain, work=None, prefix='dekr_amp: error:'):
    """Run `tool args`; check the exit status, the one error line and the work dir's old files.
    Command-line errors come from CLI11 (`prefix` ''): its line, then a --help hint."""
    before = snapshot(work) if work and os.path.isdir(work) else {}
    r = subprocess.run([tool] + args, capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, 'USE_AMP': '', 'GPUS': ''})
    err_lines = [l for l in r.stderr.splitlines() if l.strip()]
    error_lines = [l for l in err_lines if l.startswith(prefix) and 'Run with --help' not in l]
    problems = []
    if r.returncode == 0:
        problems.append('exit status 0')
    if len(error_lines) != 1:
        problems.append(f'{len(error_lines)} error lines on stderr')
    line = error_lines[0] if error_lines else ''
    for part in must_contain:
        if part not in line:
            problems.append(f'the error line does not contain {part!r}')
    if work:
        after = snapshot(work) if os.path.isdir(work) else {}
        lost = lost_files(before, after)
        if lost:
            problems.append(f'files already in the work dir lost or changed: {lost}')
    status = 'ok ' if not problems else 'FAIL'
    print(f'{status} {name}: rc {r.returncode}: {line or err_lines[-1:] }')
    if problems:
        failures.append(name)
        print('     ' + '; '.join(problems))
        print('     stderr tail: ' + ' | '.join(err_lines[-3:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tool', required=True, help='the dekr_amp binary')
    a = ap.parse_args()
    tool = os.path.abspath(a.tool)
    if not os.access(tool, os.X_OK):
        print(f'dekr_amp binary {tool} not found', file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix='ampkit_bad_input_')
    try:
        work = os.path.join(tmp, 'work')
        os.makedirs(work)
        # What a user already has in the work dir: a checkpoint-like file and a note.
        with open(os.path.join(work, 'notes.txt'), 'w') as f:
            f.write('results of an earlier run\n')
        with open(os.path.join(work, 'epoch_1.safetensors'), 'wb') as f:
            f.write(os.urandom(64))
        host = ['--device', 'host', '--work-dir', work]
        small = ['--cfg-options'] + SMALL + [f'data.data_root={SAMPLE}/']

        missing = os.path.join(tmp, 'no_such_config.toml')
        # The command line's ExistingFile check (CLI11) answers before any config is read.
        case('missing config file', tool, ['train', missing] + host, [missing, 'does not exist'], work, prefix='')

        unknown = os.path.join(tmp, 'unknown_key.toml')
        with open(unknown, 'w') as f:
            f.write(f'_base_ = "{HOST_CFG}"\n[optimiser]\nlr = 0.1\n')
        case('unknown key in the config file', tool, ['train', unknown] + host,
             ["unknown key 'optimiser.lr'", "did you mean 'optimizer.lr'", unknown], work)
        case('unknown key in --cfg-options', tool,
             ['train', HOST_CFG] + host + ['--cfg-options', 'randomness.sed=1'],
             ["unknown key 'randomness.sed'", "did you mean 'randomness.seed'"], work)

        wrong = os.path.join(tmp, 'wrong_type.toml')
        with open(wrong, 'w') as f:
            f.write(f'_base_ = "{HOST_CFG}"\n[train_cfg]\nmax_epochs = "ten"\n')
        case('wrong type in the config file', tool, ['train', wrong] + host,
             ["'train_cfg.max_epochs' expects an integer", wrong], work)

        plain = os.path.join(tmp, 'a_file')
        with open(plain, 'w') as f:
            f.write('x')
        case('work dir under a plain file', tool,
             ['train', HOST_CFG, '--device', 'host', '--work-dir', plain + '/run'] + small,
             [f"work dir '{plain}/run' cannot be created"])
        if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
            ro = os.path.join(tmp, 'read_only')
            os.makedirs(ro)
            os.chmod(ro, 0o555)
            case('work dir not writable', tool, ['train', HOST_CFG, '--device', 'host', '--work-dir', ro] + small,
                 [f"work dir '{ro}' is not writable"])
            os.chmod(ro, 0o755)
        else:
            print('(running as root: the chmod-based "not writable" case is left out; '
                  'a work dir that cannot be created is checked above)')

        empty = os.path.join(tmp, 'empty_data')
        os.makedirs(empty)
        case('dataset path without annotations', tool,
             ['train', HOST_CFG] + host + ['--cfg-options'] + SMALL + [f'data.data_root={empty}/'],
             ['annotation file', f'{empty}/annotations/person_keypoints_sample.json', 'not found'], work)

        no_images = os.path.join(tmp, 'no_images')
        os.makedirs(os.path.join(no_images, 'annotations'))
        os.makedirs(os.path.join(no_images, 'images'))
        shutil.copy(os.path.join(SAMPLE, 'annotations', 'person_keypoints_sample.json'),
                    os.path.join(no_images, 'annotations'))
        # Found when the first sample is read (the line names the sample and the missing file).
        case('dataset path with no images', tool,
             ['train', HOST_CFG] + host + ['--cfg-options'] + SMALL + [f'data.data_root={no_images}/'],
             [f"image '{no_images}/images/", 'cannot open'], work)

        # One truncated JPEG among good ones: skipped and counted (data.bad_sample = skip, the
        # default), reported at the epoch's end with its file name; the run itself succeeds.
        one_bad = os.path.join(tmp, 'one_bad')
        shutil.copytree(SAMPLE, one_bad)
        jpgs = sorted(f for f in os.listdir(os.path.join(one_bad, 'images')) if f.endswith('.jpg'))
        victim = os.path.join(one_bad, 'images', jpgs[0])
        with open(victim, 'rb') as f:
            head = f.read(200)
        with open(victim, 'wb') as f:
            f.write(head)
        run_dir = os.path.join(tmp, 'one_bad_work')
        # 4 images, batch 2: two iterations read every image once.
        two_iters = [x if x != 'train_cfg.max_iters=1' else 'train_cfg.max_iters=2' for x in SMALL]
        r = subprocess.run([tool, 'train', HOST_CFG, '--device', 'host', '--work-dir', run_dir, '--cfg-options']
                           + two_iters + ['train_cfg.batch_size=2', f'data.data_root={one_bad}/'],
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env={**os.environ, 'USE_AMP': '', 'GPUS': ''})
        out = r.stdout + r.stderr
        problems = []
        if r.returncode != 0:
            problems.append(f'exit status {r.returncode}')
        if '1 bad samples replaced' not in out:
            problems.append("no '1 bad samples replaced' report")
        if jpgs[0] not in out:
            problems.append(f'the report does not name {jpgs[0]}')
        print(f"{'ok ' if not problems else 'FAIL'} one corrupt image is skipped and counted: rc {r.returncode}")
        if problems:
            failures.append('one corrupt image')
            print('     ' + '; '.join(problems) + '\n     output tail: ' + ' | '.join(out.splitlines()[-4:]))

        bad = os.path.join(work, 'epoch_1.safetensors')
        case('corrupted checkpoint for --resume', tool,
             ['train', HOST_CFG] + host + ['--resume', bad] + small, [f"--resume '{bad}'"], work)
        case('corrupted checkpoint for test', tool,
             ['test', HOST_CFG, bad, '--device', 'host', '--work-dir', work] + small, [f"checkpoint '{bad}'"], work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f'{len(failures)} case(s) failed: {failures}')
        return 1
    print('all bad-input cases: one error line, non-zero exit, work dir intact')
    return 0


if __name__ == '__main__':
    sys.exit(main())
