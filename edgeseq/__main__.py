import sys

try:
    from edgeseq.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: one line, not a traceback
    sys.stderr.write("edgeseq: interrupted\n")
    sys.exit(130)

sys.exit(main())
