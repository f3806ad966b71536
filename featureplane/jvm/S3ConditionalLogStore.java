package featureplane;

import io.delta.storage.HadoopFileSystemLogStore;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.util.Iterator;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FSDataOutputStreamBuilder;
import org.apache.hadoop.fs.Path;

/**
 * Delta's log on S3 written as Sail and delta-rs write it: each commit is created with a
 * conditional write (If-None-Match: *), so of two writers of one version, in any process or
 * engine, S3 stores one. The other's 412 is reported as the file existing, which is how Delta
 * learns that it lost the race: it checks the winner's commit for conflicts and commits again.
 * (Delta's S3SingleDriverLogStore checks for the file and then writes it unconditionally, which
 * is safe only within one driver.)
 */
public class S3ConditionalLogStore extends HadoopFileSystemLogStore {
    private static final String CONDITIONAL = "fs.option.create.conditional.overwrite";
    private static final String REFUSED = "org.apache.hadoop.fs.s3a.RemoteFileChangedException";

    public S3ConditionalLogStore(Configuration conf) {
        super(conf);
    }

    @Override
    public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration conf)
            throws IOException {
        FSDataOutputStreamBuilder<?, ?> builder =
                path.getFileSystem(conf).createFile(path).overwrite(overwrite);
        if (!overwrite) {
            builder.must(CONDITIONAL, true);
        }
        try (FSDataOutputStream out = builder.build()) {
            while (actions.hasNext()) {
                out.write((actions.next() + "\n").getBytes(StandardCharsets.UTF_8));
            }
        } catch (IOException error) {
            if (!overwrite && refused(error)) {
                throw new FileAlreadyExistsException(path.toString());
            }
            throw error;
        }
    }

    /** Whether S3 refused the write because the object exists (412, on closing the stream). */
    private static boolean refused(Throwable error) {
        for (Throwable cause = error; cause != null; cause = cause.getCause()) {
            if (cause.getClass().getName().equals(REFUSED)
                    || cause instanceof org.apache.hadoop.fs.FileAlreadyExistsException) {
                return true;
            }
        }
        return false;
    }

    @Override
    public Boolean isPartialWriteVisible(Path path, Configuration conf) {
        return false; // an S3 PUT is all or nothing
    }
}
