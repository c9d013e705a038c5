#!/bin/sh
# Mutation testing of kfmagic's pure core (not part of CI): mutmut mutates the modules listed in
# [tool.mutmut] of pyproject.toml and runs the fast in-process tests that reach each mutant, in
# mutants/ (a copy of the project, kept between runs: only what changed is tested again).
# Then prints the score of each module; mutation/equivalent.md lists the equivalent survivors.
#
#   mutation/run.sh                     everything (about 25 minutes on 2 cores, nice'd, 1 worker)
#   mutation/run.sh 'kfmagic.drift*'    only the mutants matching a pattern, tested again
#   MUTMUT_CHILDREN=2 mutation/run.sh   more workers, on a machine nobody else is using
set -e
cd "$(dirname "$0")/.."
mkdir -p mutants
nice -n 19 mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" > mutants/run.log 2>&1 || {
    tail -n 30 mutants/run.log
    exit 1
}
python mutation/score.py
