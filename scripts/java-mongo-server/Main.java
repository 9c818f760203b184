// Starts mongo-java-server (in-memory backend) on 127.0.0.1:PORT until the
// process is stopped: the indexed MongoDB-compatible server of
// scripts/java-mongo-server.sh. Usage: java -cp DEPS Main.java PORT
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

public class Main {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Main PORT");
            System.exit(2);
        }
        MongoServer server = new MongoServer(new MemoryBackend());
        server.bind("127.0.0.1", Integer.parseInt(args[0]));
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow));
        System.out.println("listening on 127.0.0.1:" + args[0]);
        Thread.currentThread().join();
    }
}
