"""The entry points (`python jobs/<name>.py`); a package only so that tests import them as
`jobs.<name>`."""
