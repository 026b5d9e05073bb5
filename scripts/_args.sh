# Sourced by the sweep scripts (from the repo root): --dry-run (or DRY_RUN=1), -h/--help
# (prints the calling script's header comment); every other argument is a Hydra override,
# collected in EXTRA. RG is the CLI: `replaygrpo` on PATH, else the repo's .venv.
if command -v replaygrpo >/dev/null; then RG=replaygrpo; else RG=.venv/bin/replaygrpo; fi

parse_args() {
  DRY_RUN="${DRY_RUN:-0}"
  EXTRA=()
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) EXTRA+=("$arg") ;;
    esac
  done
}
