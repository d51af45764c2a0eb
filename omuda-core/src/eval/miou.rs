//! Confusion-matrix mIoU with the mmseg protocol (`lhoyer/MIC
//! seg/mmseg/core/evaluation/metrics.py` `intersect_and_union` / `eval_metrics`
//! and the nanmean of `CustomDataset.evaluate`).

use serde::{Deserialize, Serialize};

/// Counts of (label, prediction) pairs over valid pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub num_classes: usize,
    /// Row = ground-truth class, column = predicted class.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Add one image. Pixels whose label is `ignore` (or ≥ K) are skipped;
    /// predictions must be < K.
    pub fn add(&mut self, label: &[u8], pred: &[u32], ignore: u8) -> crate::Result<()> {
        if label.len() != pred.len() {
            return Err(crate::Error::msg(format!(
                "confusion matrix: label has {} pixels, prediction {}",
                label.len(),
                pred.len()
            )));
        }
        let k = self.num_classes;
        for (&l, &p) in label.iter().zip(pred) {
            if l == ignore || l as usize >= k {
                continue;
            }
            if p as usize >= k {
                return Err(crate::Error::msg(format!(
                    "confusion matrix: prediction {p} is not a class index < {k}"
                )));
            }
            self.counts[l as usize * k + p as usize] += 1;
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// IoU per class; `None` where the union is empty (class absent from both).
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.num_classes;
        (0..k)
            .map(|c| {
                let inter = self.counts[c * k + c] as f64;
                let label: u64 = (0..k).map(|p| self.counts[c * k + p]).sum();
                let pred: u64 = (0..k).map(|l| self.counts[l * k + c]).sum();
                let union = label as f64 + pred as f64 - inter;
                (union > 0.0).then(|| inter / union)
            })
            .collect()
    }

    /// Mean IoU over `classes` (all if `None`), skipping classes with an empty union.
    /// `None` if no class has a non-empty union.
    pub fn miou(&self, classes: Option<&[usize]>) -> Option<f64> {
        let iou = self.iou();
        let picked: Vec<f64> = match classes {
            Some(cs) => cs
                .iter()
                .filter_map(|&c| iou.get(c).copied().flatten())
                .collect(),
            None => iou.into_iter().flatten().collect(),
        };
        (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
    }

    /// Overall pixel accuracy.
    pub fn accuracy(&self) -> Option<f64> {
        let k = self.num_classes;
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..k).map(|c| self.counts[c * k + c]).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }
}

fn as_indices(classes: &[u8]) -> Vec<usize> {
    classes.iter().map(|&c| c as usize).collect()
}

/// A finished evaluation: per-class IoU and the 19/16/13-class means, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiouReport {
    pub class_names: Vec<String>,
    /// Per-class IoU ×100, `null` for classes absent from labels and predictions.
    pub per_class_iou: Vec<Option<f64>>,
    pub miou: Option<f64>,
    /// Over the 16 SYNTHIA classes (only when the class set is Cityscapes' 19).
    pub miou16: Option<f64>,
    /// Over the 13 SYNTHIA classes.
    pub miou13: Option<f64>,
    pub pixel_accuracy: Option<f64>,
    pub num_images: usize,
}

impl MiouReport {
    pub fn from_confusion(cm: &ConfusionMatrix, class_names: &[&str], num_images: usize) -> Self {
        let pct = |v: Option<f64>| v.map(|x| x * 100.0);
        let cityscapes = cm.num_classes == 19;
        Self {
            class_names: class_names.iter().map(|s| s.to_string()).collect(),
            per_class_iou: cm.iou().into_iter().map(pct).collect(),
            miou: pct(cm.miou(None)),
            miou16: if cityscapes {
                pct(cm.miou(Some(&as_indices(&crate::data::classes::SYNTHIA_16))))
            } else {
                None
            },
            miou13: if cityscapes {
                pct(cm.miou(Some(&as_indices(&crate::data::classes::SYNTHIA_13))))
            } else {
                None
            },
            pixel_accuracy: pct(cm.accuracy()),
            num_images,
        }
    }

    /// A plain-text table: one row per class, then the means.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w = self
            .class_names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(5)
            .max(5);
        s.push_str(&format!("{:<w$}  IoU\n", "class"));
        for (name, iou) in self.class_names.iter().zip(&self.per_class_iou) {
            let v = iou
                .map(|x| format!("{x:6.2}"))
                .unwrap_or_else(|| "   n/a".into());
            s.push_str(&format!("{name:<w$} {v}\n"));
        }
        let f = |v: Option<f64>| {
            v.map(|x| format!("{x:6.2}"))
                .unwrap_or_else(|| "   n/a".into())
        };
        s.push_str(&format!("{:<w$} {}\n", "mIoU", f(self.miou)));
        if self.miou16.is_some() {
            s.push_str(&format!("{:<w$} {}\n", "mIoU16", f(self.miou16)));
            s.push_str(&format!("{:<w$} {}\n", "mIoU13", f(self.miou13)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 classes, hand-computed:
    /// labels [0,0,1,1,2,255], preds [0,1,1,1,0,2]
    /// class 0: I=1, L=2, P=2 → 1/3; class 1: I=2, L=2, P=3 → 2/3; class 2: I=0, L=1, P=0 → 0.
    #[test]
    fn hand_computed_confusion() {
        let mut cm = ConfusionMatrix::new(3);
        cm.add(&[0, 0, 1, 1, 2, 255], &[0, 1, 1, 1, 0, 2], 255)
            .unwrap();
        let iou = cm.iou();
        assert!((iou[0].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou[2], Some(0.0));
        assert!((cm.miou(None).unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((cm.accuracy().unwrap() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn absent_class_is_skipped_not_zero() {
        let mut cm = ConfusionMatrix::new(4);
        cm.add(&[0, 1, 1], &[0, 1, 0], 255).unwrap();
        let iou = cm.iou();
        assert_eq!(iou[2], None);
        assert_eq!(iou[3], None);
        // nanmean over classes 0 (1/2) and 1 (1/2)
        assert!((cm.miou(None).unwrap() - 0.5).abs() < 1e-12);
        assert!((cm.miou(Some(&[1, 2])).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(cm.miou(Some(&[2, 3])), None);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut cm = ConfusionMatrix::new(2);
        assert!(cm.add(&[0, 1], &[0], 255).is_err());
        let e = cm.add(&[0], &[5], 255).unwrap_err().to_string();
        assert!(e.contains("prediction 5"), "{e}");
    }

    #[test]
    fn subsets_on_19_classes() {
        let mut cm = ConfusionMatrix::new(19);
        let labels: Vec<u8> = (0..19).collect();
        let mut preds: Vec<u32> = (0..19).collect();
        preds[3] = 0; // wall predicted as road: IoU(wall)=0, IoU(road)=1/2
        cm.add(&labels, &preds, 255).unwrap();
        let names = crate::data::classes::CITYSCAPES_CLASSES;
        let r = MiouReport::from_confusion(&cm, &names, 1);
        assert!((r.miou.unwrap() - 100.0 * (17.0 + 0.5) / 19.0).abs() < 1e-9);
        // 16 classes drop 9, 14, 16 (all perfect): road 0.5, wall 0, 14 perfect
        assert!((r.miou16.unwrap() - 100.0 * 14.5 / 16.0).abs() < 1e-9);
        // 13 classes also drop wall, fence, pole: road 0.5 + 12 perfect
        assert!((r.miou13.unwrap() - 100.0 * 12.5 / 13.0).abs() < 1e-9);
        assert!(r.table().contains("mIoU16"));
    }
}
