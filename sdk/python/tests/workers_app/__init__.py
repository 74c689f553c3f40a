"""Worker applications the tests run as `ferry-worker` subprocesses (the tests put this
directory's parent on the subprocess's path)."""
