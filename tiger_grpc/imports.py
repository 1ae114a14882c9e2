"""One lock for the ML stack's lazy imports, taken by every thread that imports it.

transformers (and optimum, peft) import their submodules lazily; two threads that
first touch the same name at once can see a half-initialized module and fail with
`ImportError: cannot import name ...`. Tokenizer loads, trainings, imports and the
preparation all run on worker threads, so each takes this lock around its imports.
"""

import threading

IMPORT_LOCK = threading.RLock()
