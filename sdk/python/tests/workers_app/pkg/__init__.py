"""A package of `@ferry.task` modules, for `ferry-worker workers_app.pkg`."""
