# Sourced by scripts/ablation_hosts.sh and scripts/ablation_rows.sh: writes
# the calibrated hosts' configurations (scripts/calibrate.sh's rows) into
# "$1": DACS; DAFormer = RCS (published temperature, min_pixels scaled to
# 128x256 frames), the pseudo-label crop and the feature distance at the
# weight dev chose; MIC(DAFormer) = the same plus MIC's masked term.
write_host_configs() {
  local dir=$1
  local host='[uda]
pseudo_label_crop = [15, 120]
[data.rcs]
class_temp = 0.01
min_pixels = 50
min_crop_ratio = 0.5
[fd]
lambda = 0.05'
  mkdir -p "$dir"
  printf '%s\n' 'methods = ["dacs"]' > "$dir/dacs.toml"
  printf '%s\n' 'methods = ["daformer"]' "$host" > "$dir/daformer.toml"
  printf '%s\n' 'methods = ["mic_daformer"]' "$host" > "$dir/mic_daformer.toml"
}
