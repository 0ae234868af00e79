"""The jobs' command lines: one module per job, each with a ``main(argv)``.

``python jobs/<name>.py`` (what ``ray job submit``, cron and the CronJob run) and the console
scripts ``samadapter-<name>`` (pyproject.toml) call the same ``main``. Every job's settings
come through ``samadapter/config.py``.
"""
