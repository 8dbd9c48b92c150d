import sys

try:                                    # a Ctrl-C while fewstep loads is one line too
    from .cli import main
except KeyboardInterrupt:
    print("fewstep: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
