"""Launchers: where a sweep's workers or a run execute. The sweep and the run do not know which.

    slurm.py   `trainpipe sweep FILE --slurm` (a job array of workers) and `trainpipe train
               CONFIG --slurm` (one run; DDP over Slurm's tasks), through submitit
               (`pip install 'trainpipe[slurm]'`, imported only when used)

Local workers (`--workers N`) stay in trainpipe.sweep.run: they are the sweep's own default.
"""
